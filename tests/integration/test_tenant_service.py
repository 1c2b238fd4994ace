"""TenantService on the embedded engine: the engine's parser, provisioning, and the gRPC API.

* Every statement the provisioner would send to a server is parsed by the engine's own parser
  (``formatQuery``, chDB 26.x), for every catalog table and for hostile tenant ids; the parsed
  row policy's USING literal is evaluated by the engine and must equal the tenant id exactly.
* Provisioning on chDB (which cannot enforce row policies) is idempotent, recorded with
  ``row_policies_enforced = False``, listed, and removed.
* The enforcing path runs against ``ParseOnlyAccessControl``: the real engine for everything,
  except that access statements (which chDB's ``default`` user may not run) are parsed by the
  engine instead of executed. It stands in for a server with SQL RBAC, which no package
  registry here provides.
* The servicer runs in a real grpc.aio server with the auth interceptor.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import grpc
import pyarrow as pa
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.v1 import tenant_pb2, tenant_pb2_grpc
from service.api.interceptors import AuthInterceptor
from service.api.tenant_servicer import TenantServicer
from service.auth import ADMIN_PERMISSION, TokenVerifier, mint_token
from service.backends.base import AnalyticsBackend
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog
from service.errors import AnalyticsError
from service.query.values import encode_text_parameter
from service.settings import Settings
from service.tenants import (
    AccessStatement,
    TenantProvisioner,
    deprovision_statements,
    derive_credentials,
    provision_statements,
    replica_tables,
    tenant_user_name,
)
from tests.conftest import catalog_in_database, unique_database
from tests.grpc_errors import error_details
from tests.strategies import HOSTILE_STRINGS

pytestmark = pytest.mark.integration

SECRET = b"integration-secret-of-at-least-32-bytes"
ENGINE = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HOSTILE_TENANTS = (
    "acme",
    *[s for s in HOSTILE_STRINGS if s],
    "a" * 128,
    "' TO default; DROP USER default --",
    "x' OR 1 = 1 OR tenant_id = 'y",
    "\\x27 OR 1",
    "\\'",
)
ACCESS_PREFIXES = ("CREATE USER", "ALTER USER", "CREATE ROW POLICY", "GRANT", "REVOKE", "DROP ")


async def format_query(backend: EmbeddedBackend, sql: str) -> str:
    """The engine's canonical single-line rendering of ``sql`` (raises if it does not parse)."""
    rows = await backend.query_rows(
        "SELECT formatQuerySingleLine({sql:String}) AS formatted",
        {"sql": encode_text_parameter(sql)},
    )
    return str(rows[0]["formatted"])


async def check_statements(
    backend: EmbeddedBackend, catalog: Catalog, tenant: str, statements: list[AccessStatement]
) -> None:
    """Every statement parses; each row policy's USING literal is exactly ``tenant``."""
    user = tenant_user_name(tenant)
    db = catalog.database
    policies = 0
    for statement in statements:
        formatted = await format_query(backend, statement.sql)
        assert formatted.split(" ")[0] in {"CREATE", "ALTER", "GRANT", "REVOKE", "DROP"}
        if not formatted.startswith("CREATE ROW POLICY"):
            continue
        policies += 1
        table = re.match(rf"CREATE ROW POLICY OR REPLACE {user} ON {db}\.(\w+) ", formatted)
        assert table, formatted
        # A replica, or a rollup of one (with its model's tenant column).
        model = next(
            m
            for m in catalog.models.values()
            if table[1] in (m.table, *(r.table for r in m.rollups))
        )
        prefix = (
            f"CREATE ROW POLICY OR REPLACE {user} ON {db}.{table[1]} "
            f"FOR SELECT USING {model.tenant_column} = "
        )
        suffix = f" TO {user}"
        assert formatted.startswith(prefix), formatted
        assert formatted.endswith(suffix), formatted
        literal = formatted[len(prefix) : -len(suffix)]
        # The engine reads the literal it printed back and compares it with the bound tenant:
        # anything that escaped the literal would change the columns or fail to parse.
        rows = await backend.query_rows(
            f"SELECT {literal} AS value, value = {{tenant:String}} AS same",
            {"tenant": encode_text_parameter(tenant)},
        )
        assert rows == [{"value": tenant, "same": 1}]
    assert policies == len(replica_tables(catalog))


@pytest.fixture(scope="module")
def tenant_catalog(catalog: Catalog) -> Catalog:
    return catalog_in_database(catalog, unique_database("tenants"))


# --- the engine's parser ------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", HOSTILE_TENANTS)
async def test_every_statement_parses_for_every_table(
    embedded_backend: EmbeddedBackend, catalog: Catalog, tenant: str
) -> None:
    credentials = derive_credentials(SECRET, tenant)
    statements = provision_statements(
        catalog, tenant, credentials, previous_tables=["retired_table"]
    )
    await check_statements(embedded_backend, catalog, tenant, statements)
    user = credentials.user
    user_statement = await format_query(embedded_backend, statements[0].sql)
    assert user_statement == (
        f"CREATE USER IF NOT EXISTS {user} IDENTIFIED WITH sha256_hash BY "
        f"'{credentials.password_sha256}' DEFAULT DATABASE {catalog.database} "
        "SETTINGS readonly = 2"
    )
    for statement in deprovision_statements(catalog, tenant, tables=["retired_table"]):
        assert (await format_query(embedded_backend, statement.sql)).startswith(
            ("DROP USER IF EXISTS ", "DROP ROW POLICY IF EXISTS ")
        )


@ENGINE
@given(tenant=st.text(min_size=1, max_size=128))
async def test_random_tenant_ids_parse_to_exactly_themselves(
    embedded_backend: EmbeddedBackend, catalog: Catalog, tenant: str
) -> None:
    credentials = derive_credentials(SECRET, tenant)
    statements = provision_statements(catalog, tenant, credentials)
    await check_statements(embedded_backend, catalog, tenant, statements)


async def test_a_statement_that_breaks_out_is_caught(
    embedded_backend: EmbeddedBackend, catalog: Catalog
) -> None:
    # The check itself must notice a literal that was not escaped.
    model = next(iter(catalog.models.values()))
    user = tenant_user_name("x")
    naive = (
        f"CREATE ROW POLICY OR REPLACE {user} ON {catalog.database}.{model.table} "
        f"FOR SELECT USING tenant_id = 'x' OR 1 = 1 OR tenant_id = 'y' TO {user}"
    )
    with pytest.raises(AssertionError):
        await check_statements(
            embedded_backend,
            catalog,
            "x' OR 1 = 1 OR tenant_id = 'y",
            [AccessStatement(naive, naive)],
        )


# --- provisioning on the embedded engine ----------------------------------------------------------


async def test_provisioning_is_idempotent_and_honest(
    embedded_backend: EmbeddedBackend, tenant_catalog: Catalog
) -> None:
    provisioner = TenantProvisioner(tenant_catalog, embedded_backend, None)
    tenant = "acme 'quoted' \\ tenant"
    first = await provisioner.provision(tenant)
    assert first.created
    assert first.record.row_policies_enforced is False
    assert first.record.user_name == ""
    assert first.record.tables == replica_tables(tenant_catalog)
    second = await provisioner.provision(tenant)
    assert not second.created
    assert not second.changed
    assert second.record == first.record
    page = await provisioner.list_tenants()
    assert [r for r in page.tenants if r.tenant_id == tenant] == [first.record]
    rows = await embedded_backend.query_rows(
        f"SELECT count() AS n FROM `{tenant_catalog.database}`.`_tenants` FINAL "
        "WHERE tenant_id = {t:String}",
        {"t": encode_text_parameter(tenant)},
    )
    assert rows == [{"n": 1}]
    removed = await provisioner.deprovision(tenant)
    assert removed == first.record
    assert await provisioner.get(tenant) is None
    assert tenant not in [r.tenant_id for r in (await provisioner.list_tenants()).tenants]
    assert await provisioner.deprovision(tenant) is None
    again = await provisioner.provision(tenant)
    assert again.created
    await provisioner.deprovision(tenant)


async def test_reconcile_follows_a_catalog_that_gained_a_table(
    embedded_backend: EmbeddedBackend, catalog: Catalog
) -> None:
    full = catalog_in_database(catalog, unique_database("tenants_grow"))
    first_key = next(iter(full.models))
    smaller = dataclasses.replace(
        full, models={k: m for k, m in full.models.items() if k != first_key}
    )
    before = TenantProvisioner(smaller, embedded_backend, None)
    await before.provision("acme")
    await before.provision("globex")
    assert (await before.get("acme")).tables == replica_tables(smaller)  # type: ignore[union-attr]
    after = TenantProvisioner(full, embedded_backend, None)
    applied = await after.reconcile()
    assert sorted(r.tenant_id for r in applied) == ["acme", "globex"]
    assert all(r.tables == replica_tables(full) for r in applied)
    assert await after.reconcile() == []
    assert [r.tenant_id for r in await after.reconcile(force=True)] == ["acme", "globex"]


async def test_listing_pages_through_every_tenant(
    embedded_backend: EmbeddedBackend, catalog: Catalog
) -> None:
    provisioner = TenantProvisioner(
        catalog_in_database(catalog, unique_database("tenants_pages")), embedded_backend, None
    )
    tenants = sorted(["b", "a", "c\n", "日本", "d'", "e\\"])
    for tenant in tenants:
        await provisioner.provision(tenant)
    seen: list[str] = []
    after = ""
    while True:
        page = await provisioner.list_tenants(limit=4, after=after)
        seen += [r.tenant_id for r in page.tenants]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == sorted(tenants, key=lambda t: t.encode())


# --- the enforcing path, parsed by the engine instead of executed ------------------------------


class ParseOnlyAccessControl:
    """The embedded engine, claiming SQL access control: access statements are only parsed."""

    name = "parse-only"
    enforces_row_policies = True

    def __init__(self, engine: EmbeddedBackend, *, execute_access: bool = False) -> None:
        self._engine = engine
        self._execute_access = execute_access
        self.parsed: list[str] = []

    async def command(self, sql: str, parameters: Mapping[str, str] | None = None) -> None:
        if sql.startswith(ACCESS_PREFIXES) and not self._execute_access:
            self.parsed.append(await format_query(self._engine, sql))
            return
        await self._engine.command(sql, parameters)

    async def query_rows(
        self, sql: str, parameters: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        return await self._engine.query_rows(sql, parameters)

    async def insert_arrow(self, database: str, table: str, data: pa.Table) -> int:
        return await self._engine.insert_arrow(database, table, data)


def _as_backend(engine: ParseOnlyAccessControl) -> AnalyticsBackend:
    return cast(AnalyticsBackend, engine)


async def test_enforcing_path_records_the_user_and_never_logs_secrets(
    embedded_backend: EmbeddedBackend, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    moved = catalog_in_database(catalog, unique_database("tenants_rbac"))
    engine = ParseOnlyAccessControl(embedded_backend)
    provisioner = TenantProvisioner(moved, _as_backend(engine), SECRET)
    tenant = "acme' OR 1=1 --"
    credentials = derive_credentials(SECRET, tenant)
    with structlog.testing.capture_logs() as logs:
        result = await provisioner.provision(tenant)
        again = await provisioner.provision(tenant)
        page = await provisioner.list_tenants()
        removed = await provisioner.deprovision(tenant)
    assert result.record.row_policies_enforced is True
    assert result.record.user_name == credentials.user
    assert again.record == result.record
    assert not again.changed
    assert page.tenants == [result.record]
    assert removed == result.record
    # The engine parsed the hash-bearing statements (twice: provisioning ran twice) ...
    assert sum(credentials.password_sha256 in s for s in engine.parsed) == 4
    assert any(s.startswith(f"DROP USER IF EXISTS {credentials.user}") for s in engine.parsed)
    # ... and no log line, structured or not, holds the password or its hash.
    shown = repr(logs) + caplog.text
    assert any(entry["event"] == "tenant provisioned" for entry in logs)
    for secret in (credentials.password, credentials.password_sha256):
        assert secret not in shown
        assert secret not in repr(result)


async def test_an_engine_refusing_the_statements_leaks_nothing(
    embedded_backend: EmbeddedBackend, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    # chDB's default user may not CREATE USER: the real engine's refusal travels up redacted.
    moved = catalog_in_database(catalog, unique_database("tenants_denied"))
    engine = ParseOnlyAccessControl(embedded_backend, execute_access=True)
    provisioner = TenantProvisioner(moved, _as_backend(engine), SECRET)
    credentials = derive_credentials(SECRET, "acme")
    with structlog.testing.capture_logs() as logs, pytest.raises(AnalyticsError) as caught:
        await provisioner.provision("acme")
    error = caught.value
    shown = " ".join([repr(logs), caplog.text, repr(error), *error.metadata.values()])
    for secret in (credentials.password, credentials.password_sha256):
        assert secret not in shown
    assert "ACCESS_DENIED" in error.metadata.get("engine_message", "")
    assert await provisioner.get("acme") is None


# --- the gRPC API ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_settings() -> Settings:
    return Settings(port=0)


@pytest.fixture(scope="module")
async def tenant_stub(
    grpc_settings: Settings, embedded_backend: EmbeddedBackend, catalog: Catalog
) -> AsyncIterator[tenant_pb2_grpc.TenantServiceStub]:
    provisioner = TenantProvisioner(
        catalog_in_database(catalog, unique_database("tenants_api")), embedded_backend, None
    )
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(TokenVerifier(grpc_settings))],
        options=[("grpc.so_reuseport", 0)],
    )
    tenant_pb2_grpc.add_TenantServiceServicer_to_server(TenantServicer(provisioner), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield tenant_pb2_grpc.TenantServiceStub(channel)
    finally:
        await server.stop(1.0)


def auth(settings: Settings, *permissions: str) -> tuple[tuple[str, str], ...]:
    token = mint_token(settings, subject="operator", tenant="ops", permissions=permissions)
    return (("authorization", f"Bearer {token}"),)


async def test_admin_provisions_lists_and_removes(
    tenant_stub: tenant_pb2_grpc.TenantServiceStub, grpc_settings: Settings, catalog: Catalog
) -> None:
    admin = auth(grpc_settings, ADMIN_PERMISSION)
    request = tenant_pb2.ProvisionTenantRequest(tenant_id="initech")
    first = await tenant_stub.ProvisionTenant(request, metadata=admin)
    assert first.created
    tenant = first.tenant
    assert tenant.tenant_id == "initech"
    assert tenant.row_policies_enforced is False
    assert tenant.user_name == ""
    assert list(tenant.tables) == list(replica_tables(catalog))
    assert "not enforced" in tenant.enforcement_detail
    assert tenant.created_at.seconds > 0
    assert tenant.created_at == tenant.updated_at
    second = await tenant_stub.ProvisionTenant(request, metadata=admin)
    assert not second.created
    assert second.tenant == tenant
    listed = await tenant_stub.ListTenants(tenant_pb2.ListTenantsRequest(), metadata=admin)
    assert list(listed.tenants) == [tenant]
    assert listed.next_page_token == ""
    assert listed.engine_enforces_row_policies is False
    assert "cannot enforce" in listed.engine_detail
    removed = await tenant_stub.DeprovisionTenant(
        tenant_pb2.DeprovisionTenantRequest(tenant_id="initech"), metadata=admin
    )
    assert removed.existed
    assert removed.tenant == tenant
    listed = await tenant_stub.ListTenants(tenant_pb2.ListTenantsRequest(), metadata=admin)
    assert list(listed.tenants) == []
    gone = await tenant_stub.DeprovisionTenant(
        tenant_pb2.DeprovisionTenantRequest(tenant_id="initech"), metadata=admin
    )
    assert not gone.existed
    assert not gone.HasField("tenant")


async def test_pages_follow_the_token(
    tenant_stub: tenant_pb2_grpc.TenantServiceStub, grpc_settings: Settings
) -> None:
    admin = auth(grpc_settings, ADMIN_PERMISSION)
    names = [f"paged-{i}" for i in range(5)]
    for name in names:
        await tenant_stub.ProvisionTenant(
            tenant_pb2.ProvisionTenantRequest(tenant_id=name), metadata=admin
        )
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await tenant_stub.ListTenants(
            tenant_pb2.ListTenantsRequest(page_size=2, page_token=token), metadata=admin
        )
        pages += 1
        seen += [t.tenant_id for t in page.tenants]
        token = page.next_page_token
        if not token:
            break
    assert seen == names
    assert pages == 3
    for name in names:
        await tenant_stub.DeprovisionTenant(
            tenant_pb2.DeprovisionTenantRequest(tenant_id=name), metadata=admin
        )


@pytest.mark.parametrize("permissions", [("*.*.read",), ("*.*",), ("analytics.*",), ()])
@pytest.mark.parametrize("rpc", ["ProvisionTenant", "DeprovisionTenant", "ListTenants"])
async def test_non_admins_are_denied(
    tenant_stub: tenant_pb2_grpc.TenantServiceStub,
    grpc_settings: Settings,
    rpc: str,
    permissions: tuple[str, ...],
) -> None:
    requests = {
        "ProvisionTenant": tenant_pb2.ProvisionTenantRequest(tenant_id="intruder"),
        "DeprovisionTenant": tenant_pb2.DeprovisionTenantRequest(tenant_id="initech"),
        "ListTenants": tenant_pb2.ListTenantsRequest(),
    }
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(tenant_stub, rpc)(requests[rpc], metadata=auth(grpc_settings, *permissions))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info, _ = error_details(caught.value)
    assert info.reason == "PERMISSION_DENIED"
    assert info.metadata["permission"] == ADMIN_PERMISSION
    admin = auth(grpc_settings, ADMIN_PERMISSION)
    listed = await tenant_stub.ListTenants(tenant_pb2.ListTenantsRequest(), metadata=admin)
    assert "intruder" not in [t.tenant_id for t in listed.tenants]


async def test_no_token_is_unauthenticated(
    tenant_stub: tenant_pb2_grpc.TenantServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenant_stub.ListTenants(tenant_pb2.ListTenantsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("rpc", "request_message", "field"),
    [
        ("ProvisionTenant", tenant_pb2.ProvisionTenantRequest(), "tenantId"),
        ("ProvisionTenant", tenant_pb2.ProvisionTenantRequest(tenant_id="x" * 129), "tenantId"),
        ("DeprovisionTenant", tenant_pb2.DeprovisionTenantRequest(), "tenantId"),
        ("ListTenants", tenant_pb2.ListTenantsRequest(page_size=-1), "pageSize"),
        ("ListTenants", tenant_pb2.ListTenantsRequest(page_token="nope"), "pageToken"),
    ],
)
async def test_invalid_requests_name_the_field(
    tenant_stub: tenant_pb2_grpc.TenantServiceStub,
    grpc_settings: Settings,
    rpc: str,
    request_message: Any,
    field: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(tenant_stub, rpc)(
            request_message, metadata=auth(grpc_settings, ADMIN_PERMISSION)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, fields = error_details(caught.value)
    assert fields == [field]
