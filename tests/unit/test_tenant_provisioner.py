"""The tenant provisioner's pure parts: names, credentials, statements, tokens (no engine).

Ground truth for the string literals is an independent reading of ClickHouse's lexer rules
(``read_clickhouse_literal`` below); the engine's own parser checks the same statements in
tests/integration/test_tenant_service.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, cast

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.tenant_servicer import require_admin
from service.auth import ADMIN_PERMISSION, Principal
from service.backends.base import AnalyticsBackend
from service.backends.dialect import Dialect
from service.catalog import Catalog
from service.errors import AnalyticsError, ErrorKind
from service.schema import SYNC_STATE_TABLE
from service.tenants import (
    HIDDEN,
    MAX_TENANT_ID_LENGTH,
    TenantCredentials,
    TenantProvisioner,
    TenantRecord,
    decode_page_token,
    deprovision_statements,
    derive_credentials,
    encode_page_token,
    enforcement_detail,
    engine_detail,
    provision_statements,
    replica_tables,
    tenant_user_name,
    tenants_table_ddl,
    validate_tenant_id,
)
from tests.strategies import CATALOG, HOSTILE_STRINGS

SECRET = b"unit-test-secret-of-at-least-32-bytes!!"
USER_NAME = re.compile(r"^tenant_(?:[a-z0-9_]*[a-z0-9]_)?[0-9a-f]{20}$")
tenant_ids = st.text(min_size=1, max_size=MAX_TENANT_ID_LENGTH)
hostile_ids = st.one_of(tenant_ids, st.sampled_from(HOSTILE_STRINGS).filter(bool))

_SIMPLE_ESCAPES = {
    "a": b"\a",
    "b": b"\b",
    "e": b"\x1b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "0": b"\0",
}


def read_clickhouse_literal(sql: str, start: int) -> tuple[bytes, int]:
    """The bytes of the single-quoted literal opening at ``start`` and the index after it.

    ClickHouse's lexer: a backslash escapes the next character (``\\xHH`` is a byte, the usual
    letters are control characters, anything else stands for itself) and ``''`` is a quote.
    """
    assert sql[start] == "'"
    out = bytearray()
    index = start + 1
    while index < len(sql):
        char = sql[index]
        if char == "\\":
            following = sql[index + 1]
            if following == "x":
                out.append(int(sql[index + 2 : index + 4], 16))
                index += 4
                continue
            out += _SIMPLE_ESCAPES.get(following, following.encode("utf-8"))
            index += 2
            continue
        if char == "'":
            if sql[index + 1 : index + 2] == "'":
                out.append(ord("'"))
                index += 2
                continue
            return bytes(out), index + 1
        out += char.encode("utf-8")
        index += 1
    raise AssertionError("unterminated literal")


# --- names and credentials ----------------------------------------------------------------


@given(tenant=hostile_ids)
def test_user_names_are_plain_identifiers_ending_in_the_digest(tenant: str) -> None:
    name = tenant_user_name(tenant)
    assert USER_NAME.match(name), name
    assert len(name) <= 52
    assert name.endswith("_" + hashlib.sha256(tenant.encode()).hexdigest()[:20])
    assert tenant_user_name(tenant) == name


@given(first=tenant_ids, second=tenant_ids)
def test_different_tenants_get_different_users(first: str, second: str) -> None:
    if first != second:
        assert tenant_user_name(first) != tenant_user_name(second)


@pytest.mark.parametrize(
    ("tenant", "readable"),
    [
        ("acme", "tenant_acme_"),
        ("Acme Corp!", "tenant_acme_corp_"),
        ("  --ACME--  ", "tenant_acme_"),
        ("日本語", "tenant_"),
        ("'; DROP USER default; --", "tenant_drop_user_default_"),
        ("x" * 128, "tenant_" + "x" * 24 + "_"),
        ("a" * 23 + "-b", "tenant_" + "a" * 23 + "_"),
    ],
)
def test_user_names_keep_a_readable_part(tenant: str, readable: str) -> None:
    name = tenant_user_name(tenant)
    assert name.startswith(readable)
    assert len(name) == len(readable) + 20


def test_password_derivation_is_pinned() -> None:
    # Changing the derivation would lock every provisioned tenant out: this value must not move.
    credentials = derive_credentials(b"k" * 32, "acme")
    assert credentials.user == "tenant_acme_822b33ad87c148a0a20a"
    assert credentials.password == (
        "8dd52ad9da4145ba143d036100085ea54d37bbcacccee4f082b2d0c88e3ad6d2"
    )


@given(tenant=tenant_ids)
def test_credentials_are_deterministic_and_keyed(tenant: str) -> None:
    credentials = derive_credentials(SECRET, tenant)
    assert credentials == derive_credentials(SECRET.decode(), tenant)
    assert re.fullmatch(r"[0-9a-f]{64}", credentials.password)
    assert credentials.password_sha256 == hashlib.sha256(credentials.password.encode()).hexdigest()
    other = derive_credentials(SECRET + b"x", tenant)
    assert other.user == credentials.user
    assert other.password != credentials.password
    assert derive_credentials(SECRET, tenant + "x").password != credentials.password


def test_credentials_never_show_the_password() -> None:
    credentials = derive_credentials(SECRET, "acme")
    assert credentials.password not in repr(credentials)
    assert credentials.password not in str(credentials)
    text = f"a {credentials.password} b {credentials.password_sha256.upper()} c"
    assert credentials.redact(text) == f"a {HIDDEN} b {HIDDEN} c"


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        derive_credentials(b"short", "acme")


@pytest.mark.parametrize(
    ("tenant", "message"),
    [
        ("", "tenantId is required"),
        ("x" * 129, "at most 128 characters"),
        ("bad\udcffsurrogate", "valid Unicode"),
    ],
)
def test_invalid_tenant_ids_name_the_field(tenant: str, message: str) -> None:
    with pytest.raises(AnalyticsError) as caught:
        validate_tenant_id(tenant)
    assert caught.value.kind is ErrorKind.VALIDATION
    assert [v.field for v in caught.value.violations] == ["tenantId"]
    assert message in caught.value.message


# --- statements ----------------------------------------------------------------------------


def _policies(statements: list[str]) -> list[str]:
    return [s for s in statements if s.startswith("CREATE ROW POLICY")]


def test_statements_cover_every_replica_table(catalog: Catalog) -> None:
    credentials = derive_credentials(SECRET, "acme")
    statements = [s.sql for s in provision_statements(catalog, "acme", credentials)]
    user = f"`{credentials.user}`"
    tables = replica_tables(catalog)
    # The replicas and the rollups: both hold tenants' rows.
    rollups = [r.table for m in catalog.models.values() for r in m.rollups]
    assert rollups
    assert tables == tuple(sorted([*(m.table for m in catalog.models.values()), *rollups]))
    assert statements[0] == (
        f"CREATE USER IF NOT EXISTS {user} IDENTIFIED WITH sha256_hash BY "
        f"'{credentials.password_sha256}' DEFAULT DATABASE `analytics` SETTINGS readonly = 2"
    )
    assert statements[1].startswith(f"ALTER USER {user} IDENTIFIED WITH sha256_hash BY ")
    assert _policies(statements) == [
        f"CREATE ROW POLICY OR REPLACE {user} ON `analytics`.`{table}` "
        f"FOR SELECT USING `tenant_id` = 'acme' TO {user}"
        for table in tables
    ]
    grants = [s for s in statements if s.startswith("GRANT")]
    assert grants == [
        f"GRANT SELECT ON `analytics`.`{table}` TO {user}" for table in (*tables, SYNC_STATE_TABLE)
    ]
    # The user never holds a grant on a table before that table's policy exists.
    last_policy = max(i for i, s in enumerate(statements) if s.startswith("CREATE ROW POLICY"))
    first_grant = min(i for i, s in enumerate(statements) if s.startswith("GRANT"))
    assert last_policy < first_grant
    assert len(statements) == 2 + len(tables) + len(tables) + 1


def test_only_user_statements_carry_the_secret(catalog: Catalog) -> None:
    credentials = derive_credentials(SECRET, "acme")
    for statement in provision_statements(catalog, "acme", credentials, previous_tables=["x"]):
        has_secret = credentials.password_sha256 in statement.sql
        assert statement.carries_secret == has_secret
        assert credentials.password not in statement.sql
        assert credentials.password_sha256 not in statement.redacted
        assert credentials.password_sha256 not in repr(statement)
        if has_secret:
            assert statement.redacted == statement.sql.replace(credentials.password_sha256, HIDDEN)
        else:
            assert statement.redacted == statement.sql


def test_tables_no_longer_in_the_catalog_lose_grant_then_policy(catalog: Catalog) -> None:
    credentials = derive_credentials(SECRET, "acme")
    statements = [
        s.sql
        for s in provision_statements(
            catalog, "acme", credentials, previous_tables=["crm_deals", "retired"]
        )
    ]
    user = f"`{credentials.user}`"
    revoke = statements.index(f"REVOKE SELECT ON `analytics`.`retired` FROM {user}")
    drop = statements.index(f"DROP ROW POLICY IF EXISTS {user} ON `analytics`.`retired`")
    assert revoke < drop
    assert not any("crm_deals" in s for s in statements if s.startswith(("REVOKE", "DROP")))
    assert not any("retired" in s for s in statements if s.startswith(("GRANT", "CREATE ROW")))


def test_statements_are_a_pure_function(catalog: Catalog) -> None:
    credentials = derive_credentials(SECRET, "acme")
    assert provision_statements(catalog, "acme", credentials) == provision_statements(
        catalog, "acme", credentials
    )


def test_deprovision_drops_the_user_first(catalog: Catalog) -> None:
    statements = [s.sql for s in deprovision_statements(catalog, "acme", tables=["retired"])]
    user = f"`{tenant_user_name('acme')}`"
    assert statements[0] == f"DROP USER IF EXISTS {user}"
    assert statements[1:] == [
        f"DROP ROW POLICY IF EXISTS {user} ON `analytics`.`{table}`"
        for table in sorted({*replica_tables(catalog), "retired"})
    ]


@settings(max_examples=300)
@given(tenant=hostile_ids)
def test_hostile_tenant_ids_stay_inside_the_literal(tenant: str) -> None:
    credentials = derive_credentials(SECRET, tenant)
    user = f"`{credentials.user}`"
    statements = [s.sql for s in provision_statements(CATALOG, tenant, credentials)]
    statements += [s.sql for s in deprovision_statements(CATALOG, tenant)]
    for sql in statements:
        # Valid UTF-8 with no raw control characters: one statement, one line.
        sql.encode("utf-8")
        assert not re.search(r"[\x00-\x1f\x7f]", sql), sql
    policies = _policies(statements)
    assert len(policies) == len(replica_tables(CATALOG))
    for sql, table in zip(policies, replica_tables(CATALOG), strict=True):
        prefix = (
            f"CREATE ROW POLICY OR REPLACE {user} ON `analytics`.`{table}` "
            "FOR SELECT USING `tenant_id` = "
        )
        assert sql.startswith(prefix)
        value, end = read_clickhouse_literal(sql, len(prefix))
        assert value == tenant.encode("utf-8")
        assert sql[end:] == f" TO {user}"
    # Everything but the policy literals, the user name and the hash is the same for any tenant.
    reference = derive_credentials(SECRET, "reference")
    expected = [s.sql for s in provision_statements(CATALOG, "reference", reference)]
    expected += [s.sql for s in deprovision_statements(CATALOG, "reference")]

    def shape(sql: str, credentials: TenantCredentials) -> str:
        sql = sql.replace(credentials.user, "USER").replace(credentials.password_sha256, "HASH")
        return re.sub(r"= '.*' TO", "= ? TO", sql) if sql.startswith("CREATE ROW") else sql

    assert [shape(s, credentials) for s in statements] == [shape(s, reference) for s in expected]


def test_tenants_table_follows_the_dialect(catalog: Catalog) -> None:
    modern = tenants_table_ddl(catalog)
    assert "ReplacingMergeTree(_version, _is_deleted)" in modern
    assert "`created_at` DateTime64(6, 'UTC')" in modern
    legacy = tenants_table_ddl(catalog, dialect=Dialect.for_server((18, 16, 1)))
    assert "ReplacingMergeTree(_version)\n" in legacy
    assert "`created_at` Int64" in legacy
    assert modern.startswith("CREATE TABLE IF NOT EXISTS `analytics`.`_tenants`")


# --- page tokens, permission, texts ------------------------------------------------------------


@given(after=st.text())
def test_page_tokens_round_trip(after: str) -> None:
    token = encode_page_token(after)
    assert token.isascii()
    assert decode_page_token(token) == after


@pytest.mark.parametrize("token", ["garbage", "t1:!!!", "t1:_w", "t1:YQ=", "t1:_-8"])
def test_foreign_page_tokens_are_refused(token: str) -> None:
    with pytest.raises(AnalyticsError) as caught:
        decode_page_token(token)
    assert [v.field for v in caught.value.violations] == ["pageToken"]


@pytest.mark.parametrize(
    ("permissions", "allowed"),
    [
        ({ADMIN_PERMISSION}, True),
        ({ADMIN_PERMISSION, "crm.deals.read"}, True),
        ({"*.*"}, False),
        ({"analytics.*"}, False),
        ({"*.*.read"}, False),
        (set(), False),
    ],
)
def test_only_the_admin_permission_itself_manages_tenants(
    permissions: set[str], allowed: bool
) -> None:
    principal = Principal("someone", "acme", frozenset(permissions))
    if allowed:
        require_admin(principal)
        return
    with pytest.raises(AnalyticsError) as caught:
        require_admin(principal)
    assert caught.value.kind is ErrorKind.FORBIDDEN
    assert caught.value.metadata == {"permission": ADMIN_PERMISSION}


class _Engine:
    """The smallest backend a provisioner can be built on, for checks that do no I/O."""

    def __init__(self, name: str, enforces: bool) -> None:
        self.name = name
        self.enforces_row_policies = enforces


def test_an_enforcing_engine_needs_a_secret() -> None:
    engine = cast(AnalyticsBackend, _Engine("clickhouse-server", enforces=True))
    with pytest.raises(ValueError, match="secret is required"):
        TenantProvisioner(CATALOG, engine, None)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TenantProvisioner(CATALOG, engine, "too short")
    TenantProvisioner(CATALOG, engine, SECRET)


def test_texts_never_pretend() -> None:
    chdb = cast(AnalyticsBackend, _Engine("chdb", enforces=False))
    assert "cannot enforce" in engine_detail(chdb)
    record = TenantRecord("acme", "", False, replica_tables(CATALOG), *([_epoch()] * 2))
    assert "not enforced" in enforcement_detail(record, "chdb")
    enforced = TenantRecord("acme", "tenant_x", True, ("a", "b"), *([_epoch()] * 2))
    assert "row policies on 2 tables restrict ClickHouse user tenant_x" in (
        enforcement_detail(enforced, "clickhouse-server")
    )


def _epoch() -> Any:
    import datetime as dt

    return dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


# --- a failing statement never exposes the secret -------------------------------------------------


class _EchoingServer:
    """Answers like a server whose parser rejects CREATE USER and quotes the statement back.

    Real servers quote the rest of the query in syntax errors; this is the worst case for a
    statement that carries the password hash.
    """

    name = "echoing-server"
    enforces_row_policies = True

    def __init__(self) -> None:
        self.statements: list[str] = []

    async def command(self, sql: str, parameters: Mapping[str, str] | None = None) -> None:
        self.statements.append(sql)
        if sql.startswith("CREATE USER"):
            message = f"Code: 62. DB::Exception: Syntax error: failed at position 1 ({sql})"
            raise AnalyticsError(
                ErrorKind.INTERNAL,
                f"the analytics engine failed: {message}",
                "ENGINE_ERROR",
                metadata={"engine_message": message, "engine_code": "62"},
            )

    async def query_rows(
        self, sql: str, parameters: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        return []


async def test_a_failing_user_statement_is_redacted_in_the_error_and_the_logs() -> None:
    server = _EchoingServer()
    provisioner = TenantProvisioner(CATALOG, cast(AnalyticsBackend, server), SECRET)
    credentials = derive_credentials(SECRET, "acme")
    with structlog.testing.capture_logs() as logs, pytest.raises(AnalyticsError) as caught:
        await provisioner.provision("acme")
    assert any(credentials.password_sha256 in s for s in server.statements)
    error = caught.value
    shown = " ".join([error.message, *error.metadata.values(), repr(error), str(logs)])
    for secret in (credentials.password, credentials.password_sha256):
        assert secret not in shown
    assert HIDDEN in error.metadata["engine_message"]
    assert error.__cause__ is None
    assert error.__suppress_context__
    failed = [entry for entry in logs if entry["event"] == "tenant access statement failed"]
    assert failed
    assert failed[0]["statement"].startswith("CREATE USER IF NOT EXISTS")
