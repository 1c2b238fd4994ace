"""Layer 2 of tenant isolation on the HTTP backend: each tenant's queries run as its own user.

Where the server has SQL access control, the service sends every compiled query of a tenant as
the user the provisioner created for it (credentials derived from the tenant credential secret),
so that the row policy of that user holds even if the compiler's filter had a bug; everything
else (sync state, statements) runs as the service's user.

No server with SQL access control can be installed here (Debian's 18.16 has none; chDB refuses
``CREATE USER``), so the modern path runs through ``ChdbOverHttp``, whose login check stands in
for a server's (see tests/chdb_http.py): it lets in the users given to it, refuses any other
with the server's AUTHENTICATION_FAILED, and records which user sent each statement. The real
18.16 server is asked too: it must be found unable to enforce row policies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import structlog.testing
from google.protobuf import json_format

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from service.api.server import RunningServer, start_server
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.backends.http import HttpBackend
from service.backends.http.engine_errors import redact_secrets
from service.backends.selection import tenant_login
from service.catalog import Catalog
from service.errors import AnalyticsError
from service.schema import SYNC_STATE_TABLE, all_ddl
from service.settings import Settings
from service.tenants import derive_credentials, provision_statements
from tests.chdb_http import ChdbOverHttp
from tests.conftest import catalog_in_database, unique_database
from tests.grpc_errors import error_details

pytestmark = pytest.mark.integration

SECRET = "tenant-credential-secret-for-the-tests-0123456789"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(port=0, rest_port=0, tenant_credential_secret=SECRET)


@pytest.fixture(scope="module")
async def front(embedded_backend: EmbeddedBackend) -> AsyncIterator[ChdbOverHttp]:
    served = ChdbOverHttp(embedded_backend)
    # acme was provisioned; globex was not.
    acme = derive_credentials(SECRET, "acme")
    served.logins = {acme.user: acme.password}
    await served.start()
    yield served
    await served.stop()


@pytest.fixture(scope="module")
async def users_catalog(embedded_backend: EmbeddedBackend, catalog: Catalog) -> Catalog:
    moved = catalog_in_database(catalog, unique_database("tenant_users"))
    for statement in all_ddl(moved):
        await embedded_backend.command(statement)
    await embedded_backend.command(
        f"INSERT INTO `{moved.database}`.crm_deals (tenant_id, id, contact_id, owner_id, title, "
        "stage, amount, currency, probability, created_at, updated_at, _version, _is_deleted) "
        "VALUES ('acme', 1, 1, 1, 'a', 'won', 10.5, 'EUR', 0.5, now(), now(), 1, 0), "
        "('globex', 2, 1, 1, 'g', 'won', 99, 'EUR', 0.5, now(), now(), 1, 0)"
    )
    await embedded_backend.command(
        f"INSERT INTO `{moved.database}`.`{SYNC_STATE_TABLE}` "
        "(table_name, source, last_sync_at, updated_at) "
        "VALUES ('crm_deals', 'test', '2026-04-15 10:29:55', now64(6))"
    )
    return moved


@pytest.fixture(scope="module")
async def running(
    settings: Settings, front: ChdbOverHttp, users_catalog: Catalog
) -> AsyncIterator[RunningServer]:
    backend = HttpBackend(front.url, pool_size=2, tenant_login=tenant_login(settings))
    served = await start_server(settings, catalog=users_catalog, backend=backend)
    yield served
    await served.stop(1.0)
    await backend.close()


async def query(
    settings: Settings, server: RunningServer, tenant: str
) -> analytics_pb2.QueryResponse:
    token = mint_token(settings, subject="t", tenant=tenant, permissions=("crm.deals.read",))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        request = json_format.ParseDict(
            {"model": "deals", "aggregate": "sum", "field": "amount"}, analytics_pb2.QueryRequest()
        )
        response: analytics_pb2.QueryResponse = await stub.Query(
            request, metadata=(("authorization", f"Bearer {token}"),)
        )
        return response


async def test_tenant_queries_run_as_the_tenant_user(
    settings: Settings, running: RunningServer, front: ChdbOverHttp
) -> None:
    assert running.backend.enforces_row_policies
    front.statements.clear()
    response = await query(settings, running, "acme")
    assert json_format.MessageToDict(response)["data"] == [{"sum_amount": 10.5}]
    acme_user = derive_credentials(SECRET, "acme").user
    reads = [(user, sql) for user, sql in front.statements if "crm_deals` AS t FINAL" in sql]
    assert reads
    assert {user for user, _ in reads} == {acme_user}
    state = [user for user, sql in front.statements if SYNC_STATE_TABLE in sql]
    assert state
    assert set(state) == {"default"}


async def test_a_tenant_without_a_user_is_refused(
    settings: Settings, running: RunningServer
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await query(settings, running, "globex")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info, _ = error_details(caught.value)
    assert info.reason == "TENANT_NOT_PROVISIONED"
    assert info.metadata["type"] == "forbidden"


async def test_without_a_credential_secret_queries_stay_the_service_user(
    front: ChdbOverHttp, users_catalog: Catalog
) -> None:
    plain = Settings(port=0, rest_port=0)
    backend = HttpBackend(front.url, pool_size=1, tenant_login=tenant_login(plain))
    served = await start_server(plain, catalog=users_catalog, backend=backend)
    try:
        assert not backend.enforces_row_policies
        front.statements.clear()
        response = await query(plain, served, "globex")
    finally:
        await served.stop(1.0)
        await backend.close()
    assert json_format.MessageToDict(response)["data"] == [{"sum_amount": 99}]
    assert {user for user, _ in front.statements} == {"default"}


async def test_the_installed_server_cannot_enforce_row_policies(
    installed_server: HttpBackend, settings: Settings
) -> None:
    """18.16 has no SQL access control: the backend says so rather than pretending."""
    backend = HttpBackend(installed_server.url, pool_size=1, tenant_login=tenant_login(settings))
    try:
        assert not await backend.detect_row_policies()
        assert not backend.enforces_row_policies
    finally:
        await backend.close()


def test_engine_errors_never_show_a_password_hash(catalog: Catalog) -> None:
    credentials = derive_credentials(SECRET, "acme")
    statements = provision_statements(catalog, "acme", credentials)
    create_user = next(s.sql for s in statements if "IDENTIFIED" in s.sql)
    assert credentials.password_sha256 in create_user
    message = f"Code: 62. DB::Exception: Syntax error: failed at position 3 in {create_user!s}"
    redacted = redact_secrets(message)
    assert credentials.password_sha256 not in redacted
    assert credentials.password not in redacted
    assert "Code: 62" in redacted


async def test_a_failing_access_statement_is_logged_without_its_secret(
    front: ChdbOverHttp,
) -> None:
    """The engine quotes the failing statement; neither the log nor the error carries the hash."""
    credentials = derive_credentials(SECRET, "acme")
    backend = HttpBackend(front.url, pool_size=1)
    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(AnalyticsError) as caught:
            await backend.command(
                f"CREATE USER x IDENTIFIED WITH sha256_hash BY '{credentials.password_sha256}' "
                "SYNTAX ERROR HERE"
            )
    finally:
        await backend.close()
    assert logs
    assert credentials.password_sha256 not in repr(logs)
    assert credentials.password_sha256 not in repr(caught.value.metadata)
