"""Which engine the settings select, opened: a ClickHouse server over HTTP, else chDB.

Kept apart from the server so that commands which only need an engine (the CDC worker, the
loader, backfills) import neither the gRPC stack nor, on the server path, chDB: a worker
restarted by its supervisor should be writing again within two seconds of its start.
"""

from __future__ import annotations

from service.backends.base import AnalyticsBackend
from service.backends.http.client import HttpBackend, TenantLogin
from service.settings import Settings
from service.tenants import derive_credentials, secret_bytes


def tenant_login(settings: Settings) -> TenantLogin | None:
    """Each tenant's ClickHouse user and password, derived from the credential secret if set."""
    secret = settings.tenant_credential_secret
    if secret is None:
        return None
    key = secret_bytes(secret.get_secret_value())

    def login(tenant_id: str) -> tuple[str, str]:
        credentials = derive_credentials(key, tenant_id)
        return credentials.user, credentials.password

    return login


def open_backend(settings: Settings) -> AnalyticsBackend:
    """The engine the settings select: a ClickHouse server if a URL is set, else chDB."""
    if settings.clickhouse_url:
        password = settings.clickhouse_password
        return HttpBackend(
            settings.clickhouse_url,
            user=settings.clickhouse_user,
            password=password.get_secret_value() if password else "",
            tenant_login=tenant_login(settings),
        )
    # Imported here: chDB takes about half a second to import, and server deployments never
    # load it.
    from service.backends.embedded import EmbeddedBackend  # noqa: PLC0415

    return EmbeddedBackend(settings.data_dir, pool_size=settings.engine_pool_size)
