"""Tenant provisioning: the database layer of tenant isolation (DESIGN.md section 6, layer 2).

On a ClickHouse server with SQL access control each tenant gets

* its own user, ``tenant_<readable part>_<sha256 prefix>``, whose password is derived from a
  service secret with HMAC-SHA256, so nothing secret is stored and the service can always
  re-derive it to query as that user; the server is only ever sent the password's SHA-256;
* a row policy ``USING <tenant column> = '<tenant>'`` on every replica table of the catalog,
  ``TO`` that user only, written with ``CREATE ROW POLICY OR REPLACE`` so that re-applying it
  (the catalog gained a table, the provisioning ran twice) is idempotent;
* ``SELECT`` grants on exactly those tables and the sync-state table, nothing else. The policies
  are created before the grants and revoked grants go before dropped policies, so the user never
  holds a grant on a table that has no policy for it;
* ``readonly = 2`` as a user setting: read queries only, while the per-query settings the backend
  sends (``max_execution_time``, ``readonly = 2`` itself) stay allowed.

The statements are a pure function of (catalog, tenant id, credentials) (``provision_statements``
and ``deprovision_statements``), so they are tested without a server: every one is parsed by the
engine's own parser (``formatQuery``) in the tests, hostile tenant ids included.

Every tenant is also recorded in ``<database>._tenants`` (a ReplacingMergeTree), on every engine,
so that listing works everywhere. Where the engine cannot enforce row policies
(``backend.enforces_row_policies`` is false: chDB, which runs everything as its ``default`` user,
and servers without SQL RBAC such as 18.16) no user or policy is created, the record says
``row_policies_enforced = False``, and nothing claims otherwise: the query compiler's tenant
filter is then the only isolation layer.

Secrets: the password and its hash appear only in the ``CREATE USER``/``ALTER USER`` statements
sent to the engine (ClickHouse masks them in its own query log). They are never logged here, and
an engine error raised by such a statement is re-raised with both replaced by ``[HIDDEN]``.

Server configuration: before ClickHouse 24.1, ``access_control_improvements.
users_without_row_policies_can_read_rows`` defaults to false, which makes a table that has any
row policy return no rows to users without one (the service's own user, the CDC worker's reads).
Set it to true on such servers; from 24.1 it is the default.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import structlog

from service.backends.base import AnalyticsBackend
from service.backends.dialect import MODERN, Dialect, backend_dialect, quote_string
from service.budgets.limits import BudgetOverride
from service.catalog import Catalog, Model
from service.errors import AnalyticsError, ErrorKind, not_found, validation_error
from service.query.values import encode_text_parameter
from service.schema import SYNC_STATE_TABLE, database_ddl

log = structlog.get_logger(__name__)

TENANTS_TABLE = "_tenants"
#: The tenants' budget overrides (``service.budgets``), beside their records.
TENANT_BUDGETS_TABLE = "_tenant_budgets"
USER_PREFIX = "tenant_"
#: The longest tenant id accepted, as for the token claim (``service.auth``).
MAX_TENANT_ID_LENGTH = 128
#: The shortest service secret accepted for deriving tenant passwords (HMAC-SHA256 key).
MIN_SECRET_BYTES = 32
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
HIDDEN = "[HIDDEN]"

_READABLE_LENGTH = 24
_DIGEST_LENGTH = 20
_NOT_READABLE = re.compile(r"[^a-z0-9]+", re.ASCII)
_PASSWORD_CONTEXT = b"analytics.v1/tenant-password\x00"
_PAGE_CURSOR_PREFIX = "t1:"
_RECORD_COLUMNS = "tenant_id, user_name, row_policies_enforced, tables, created_at, updated_at"


# --- names and credentials ----------------------------------------------------------------------


def validate_tenant_id(tenant_id: str, field_name: str = "tenantId") -> str:
    """Return ``tenant_id`` if it can be provisioned; raise a validation error naming the field.

    Any text of 1 to 128 characters is a tenant id (it comes from a token claim); it only has
    to be encodable as UTF-8, which every protobuf string is.
    """
    if not tenant_id:
        raise validation_error(field_name, f"{field_name} is required")
    if len(tenant_id) > MAX_TENANT_ID_LENGTH:
        raise validation_error(
            field_name, f"{field_name} must be at most {MAX_TENANT_ID_LENGTH} characters"
        )
    try:
        tenant_id.encode("utf-8")
    except UnicodeEncodeError:
        raise validation_error(field_name, f"{field_name} must be valid Unicode text") from None
    return tenant_id


def tenant_user_name(tenant_id: str) -> str:
    """The ClickHouse user (and row policy) name of a tenant: safe whatever the id holds.

    ``tenant_`` + up to 24 characters of the id in lowercase ASCII letters and digits (other
    runs become ``_``) + ``_`` + the first 80 bits of the id's SHA-256 in hex. The readable part
    only helps people; the digest, always the last 20 characters, tells tenants apart.
    """
    digest = hashlib.sha256(tenant_id.encode("utf-8")).hexdigest()[:_DIGEST_LENGTH]
    readable = _NOT_READABLE.sub("_", tenant_id.lower()).strip("_")[:_READABLE_LENGTH].rstrip("_")
    return f"{USER_PREFIX}{readable}_{digest}" if readable else f"{USER_PREFIX}{digest}"


@dataclass(frozen=True)
class TenantCredentials:
    """A tenant's ClickHouse user and password (the password never appears in ``repr``)."""

    user: str
    password: str = field(repr=False)

    @property
    def password_sha256(self) -> str:
        """What the server stores and is sent: the hex SHA-256 of the password."""
        return hashlib.sha256(self.password.encode("utf-8")).hexdigest()

    def redact(self, text: str) -> str:
        """``text`` with the password and its hash replaced by ``[HIDDEN]``."""
        for secret in (self.password, self.password_sha256, self.password_sha256.upper()):
            text = text.replace(secret, HIDDEN)
        return text


def secret_bytes(secret: bytes | str) -> bytes:
    """The service secret as bytes; raise ValueError when it is too short to key HMAC safely."""
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the tenant credential secret must be at least {MIN_SECRET_BYTES} bytes")
    return key


def derive_credentials(secret: bytes | str, tenant_id: str) -> TenantCredentials:
    """The tenant's user and password: HMAC-SHA256(secret, context || tenant id), in hex.

    Deterministic, so nothing is stored and any instance of the service derives the same
    password; a different secret gives unrelated passwords (re-provision to rotate).
    """
    mac = hmac.new(secret_bytes(secret), _PASSWORD_CONTEXT + tenant_id.encode("utf-8"), "sha256")
    return TenantCredentials(tenant_user_name(tenant_id), mac.hexdigest())


# --- statements (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessStatement:
    """One access-control statement; ``redacted`` is safe to show, ``sql`` may carry a secret."""

    sql: str = field(repr=False)
    redacted: str
    carries_secret: bool = False


def _public(sql: str) -> AccessStatement:
    return AccessStatement(sql, sql, carries_secret=False)


def _ident(name: str) -> str:
    # Every name written here is a catalog identifier or a derived user name ([a-z0-9_]).
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f"`{name}`"


def _table(catalog: Catalog, table: str) -> str:
    return f"{_ident(catalog.database)}.{_ident(table)}"


def replica_tables(catalog: Catalog) -> tuple[str, ...]:
    """The catalog's replica and rollup tables, sorted: what each tenant's row policies cover."""
    return tuple(sorted(_tenant_tables(catalog)))


def _tenant_tables(catalog: Catalog) -> dict[str, Model]:
    """Every table holding tenants' rows, with the model whose tenant column it carries."""
    tables = {model.table: model for model in catalog.models.values()}
    tables.update(
        (rollup.table, model) for model in catalog.models.values() for rollup in model.rollups
    )
    return tables


def row_policy_condition(model: Model, tenant_id: str) -> str:
    """``<tenant column> = '<tenant>'``, the literal escaped so it reads back as exactly the id."""
    return f"{_ident(model.tenant_column)} = {quote_string(tenant_id)}"


def provision_statements(
    catalog: Catalog,
    tenant_id: str,
    credentials: TenantCredentials,
    *,
    previous_tables: Iterable[str] = (),
) -> list[AccessStatement]:
    """Every statement that makes the server's access control match the catalog for a tenant.

    In order: create the user if missing, then set its password and settings (so a rotated
    secret takes effect); a row policy per replica table; for tables provisioned before
    (``previous_tables``) that the catalog no longer has, revoke the grant, then drop the policy;
    finally the ``SELECT`` grants. Running the list again changes nothing.
    """
    user = _ident(credentials.user)
    identified = f"IDENTIFIED WITH sha256_hash BY {quote_string(credentials.password_sha256)}"
    profile = f"DEFAULT DATABASE {_ident(catalog.database)} SETTINGS readonly = 2"
    statements = [
        AccessStatement(
            f"CREATE USER IF NOT EXISTS {user} {identified} {profile}",
            f"CREATE USER IF NOT EXISTS {user} IDENTIFIED WITH sha256_hash BY '{HIDDEN}' {profile}",
            carries_secret=True,
        ),
        AccessStatement(
            f"ALTER USER {user} {identified} {profile}",
            f"ALTER USER {user} IDENTIFIED WITH sha256_hash BY '{HIDDEN}' {profile}",
            carries_secret=True,
        ),
    ]
    statements += [
        _public(
            f"CREATE ROW POLICY OR REPLACE {user} ON {_table(catalog, table)} "
            f"FOR SELECT USING {row_policy_condition(model, tenant_id)} TO {user}"
        )
        for table, model in sorted(_tenant_tables(catalog).items())
    ]
    current = set(replica_tables(catalog))
    for table in sorted(set(previous_tables) - current):
        revoke = f"REVOKE SELECT ON {_table(catalog, table)} FROM {user}"  # noqa: S608
        statements.append(_public(revoke))
        statements.append(_public(f"DROP ROW POLICY IF EXISTS {user} ON {_table(catalog, table)}"))
    statements += [
        _public(f"GRANT SELECT ON {_table(catalog, table)} TO {user}")
        for table in (*sorted(current), SYNC_STATE_TABLE)
    ]
    return statements


def deprovision_statements(
    catalog: Catalog, tenant_id: str, *, tables: Iterable[str] = ()
) -> list[AccessStatement]:
    """Drop the tenant's user first (which ends its access at once), then its row policies.

    Policies are dropped for the catalog's tables and any others in ``tables`` (those recorded
    for the tenant). Every statement uses ``IF EXISTS``: removing twice is harmless.
    """
    user = _ident(tenant_user_name(tenant_id))
    statements = [_public(f"DROP USER IF EXISTS {user}")]
    statements += [
        _public(f"DROP ROW POLICY IF EXISTS {user} ON {_table(catalog, table)}")
        for table in sorted(set(replica_tables(catalog)) | set(tables))
    ]
    return statements


def tenants_table_ddl(catalog: Catalog, *, dialect: Dialect = MODERN) -> str:
    """The table that records provisioned tenants (latest ``_version`` per tenant wins)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {_table(catalog, TENANTS_TABLE)} (\n"
        "    `tenant_id` String,\n"
        "    `user_name` String,\n"
        "    `row_policies_enforced` UInt8,\n"
        "    `tables` String COMMENT 'comma-separated replica tables',\n"
        f"    {dialect.timestamp_column_definition('created_at')},\n"
        f"    {dialect.timestamp_column_definition('updated_at')},\n"
        "    `_version` UInt64,\n"
        "    `_is_deleted` UInt8\n"
        f") ENGINE = {dialect.replacing_engine('_version', '_is_deleted')}\n"
        "ORDER BY tenant_id"
    )


def tenant_budgets_table_ddl(catalog: Catalog, *, dialect: Dialect = MODERN) -> str:
    """The tenants' budget overrides (JSON of ``BudgetOverride``; latest ``_version`` wins).

    A table of its own rather than a column of ``_tenants``: the tenants tables already on
    servers (18.16 included) need no migration.
    """
    return (
        f"CREATE TABLE IF NOT EXISTS {_table(catalog, TENANT_BUDGETS_TABLE)} (\n"
        "    `tenant_id` String,\n"
        "    `budget` String COMMENT 'JSON: the limits the tenant has instead of the defaults',\n"
        "    `_version` UInt64,\n"
        "    `_is_deleted` UInt8\n"
        f") ENGINE = {dialect.replacing_engine('_version', '_is_deleted')}\n"
        "ORDER BY tenant_id"
    )


# --- records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TenantRecord:
    """A provisioned tenant as recorded."""

    tenant_id: str
    user_name: str
    row_policies_enforced: bool
    tables: tuple[str, ...]
    created_at: dt.datetime
    updated_at: dt.datetime
    budget: BudgetOverride | None = None
    """The tenant's budget override (None: the defaults of settings apply)."""

    def same_state(self, other: TenantRecord) -> bool:
        """Whether both describe the same provisioning (times aside)."""
        return (
            self.tenant_id == other.tenant_id
            and self.user_name == other.user_name
            and self.row_policies_enforced == other.row_policies_enforced
            and self.tables == other.tables
        )


@dataclass(frozen=True)
class ProvisionResult:
    """What ``TenantProvisioner.provision`` did."""

    record: TenantRecord
    created: bool
    changed: bool


@dataclass(frozen=True)
class TenantPage:
    """One page of ``TenantProvisioner.list_tenants``; ``next_after`` is None on the last."""

    tenants: list[TenantRecord]
    next_after: str | None


def engine_detail(backend: AnalyticsBackend) -> str:
    """One sentence on what the engine enforces, for the start-up log and health details."""
    if backend.enforces_row_policies:
        return (
            f"the {backend.name} engine enforces per-tenant row policies: each provisioned tenant "
            "queries as its own ClickHouse user, restricted to its rows by the engine"
        )
    gap = getattr(backend, "row_policy_gap", "")
    return (
        f"the {backend.name} engine cannot enforce per-tenant row policies"
        + (f" ({gap})" if gap else "")
        + ": no per-tenant ClickHouse users or row policies exist, and the query compiler's "
        "tenant filter is the only isolation layer"
    )


def enforcement_detail(record: TenantRecord, backend_name: str) -> str:
    """One sentence on how the tenant's rows are isolated."""
    if record.row_policies_enforced:
        return (
            f"row policies on {len(record.tables)} tables restrict ClickHouse user "
            f"{record.user_name} to this tenant's rows, besides the query compiler's tenant filter"
        )
    return (
        f"not enforced by the engine: {backend_name} cannot enforce row policies, so no "
        "ClickHouse user or row policy was created; the query compiler's tenant filter is the "
        "only isolation layer"
    )


def encode_page_token(after: str) -> str:
    """An opaque page token that continues after tenant id ``after``."""
    raw = base64.urlsafe_b64encode(after.encode("utf-8")).decode("ascii").rstrip("=")
    return _PAGE_CURSOR_PREFIX + raw


def decode_page_token(token: str, field_name: str = "pageToken") -> str:
    """The tenant id a page token continues after ('' for no token); validation error if bad."""
    if not token:
        return ""
    if not token.startswith(_PAGE_CURSOR_PREFIX):
        raise validation_error(field_name, f"{field_name} is not a token this service issued")
    raw = token[len(_PAGE_CURSOR_PREFIX) :]
    try:
        padded = raw + "=" * (-len(raw) % 4)
        decoded = base64.b64decode(padded, altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = None
    if decoded is None or encode_page_token(decoded) != token:
        raise validation_error(field_name, f"{field_name} is not a token this service issued")
    return decoded


# --- the provisioner ------------------------------------------------------------------------------


class TenantProvisioner:
    """Provisions, lists and removes tenants on one engine, for one catalog."""

    def __init__(
        self,
        catalog: Catalog,
        backend: AnalyticsBackend,
        secret: bytes | str | None,
        *,
        dialect: Dialect | None = None,
    ) -> None:
        """Provision ``catalog``'s tables on ``backend``.

        ``secret`` keys the tenant passwords (at least 32 bytes); it is required when the
        engine enforces row policies and unused otherwise. ``dialect`` is the server's (asked
        from a backend that has ``dialect()`` when not given; the modern one otherwise).
        """
        if backend.enforces_row_policies and secret is None:
            raise ValueError(
                f"the {backend.name} engine enforces row policies: "
                "a tenant credential secret is required to provision tenant users"
            )
        self._catalog = catalog
        self._backend = backend
        self._secret = secret_bytes(secret) if secret is not None else None
        self._dialect = dialect
        self._lock = asyncio.Lock()
        self._schema_ready = False

    @property
    def catalog(self) -> Catalog:
        """The catalog whose tables are provisioned."""
        return self._catalog

    @property
    def backend_name(self) -> str:
        """The engine's name."""
        return self._backend.name

    @property
    def enforces_row_policies(self) -> bool:
        """Whether provisioning creates users and row policies the engine enforces."""
        return self._backend.enforces_row_policies

    @property
    def engine_detail(self) -> str:
        """What the engine enforces, in one sentence."""
        return engine_detail(self._backend)

    def credentials(self, tenant_id: str) -> TenantCredentials:
        """The tenant's ClickHouse user and password, for the backend to query as that user."""
        if self._secret is None:
            raise ValueError("no tenant credential secret is configured")
        return derive_credentials(self._secret, tenant_id)

    async def ensure_schema(self) -> None:
        """Create the catalog database and the tenants table if they do not exist."""
        if self._schema_ready:
            return
        dialect = await self._server_dialect()
        await self._backend.command(database_ddl(self._catalog))
        await self._backend.command(tenants_table_ddl(self._catalog, dialect=dialect))
        await self._backend.command(tenant_budgets_table_ddl(self._catalog, dialect=dialect))
        self._schema_ready = True

    async def get(self, tenant_id: str) -> TenantRecord | None:
        """The tenant's record, if it is provisioned."""
        await self.ensure_schema()
        rows = await self._select("AND tenant_id = {tenant:String}", {"tenant": tenant_id}, 1)
        return rows[0] if rows else None

    async def list_tenants(self, *, limit: int = DEFAULT_PAGE_SIZE, after: str = "") -> TenantPage:
        """Up to ``limit`` tenants whose ids sort after ``after``, in order of id."""
        if limit < 1:
            raise ValueError("limit must be positive")
        await self.ensure_schema()
        rows = await self._select("AND tenant_id > {after:String}", {"after": after}, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return TenantPage(rows, rows[-1].tenant_id if more and rows else None)

    async def provision(self, tenant_id: str) -> ProvisionResult:
        """Create or update the tenant; idempotent (a second call changes nothing).

        On an enforcing engine the access statements are applied every time (they are
        idempotent, and this repairs any drift); the record is written only when it changes.
        """
        validate_tenant_id(tenant_id)
        async with self._lock:
            await self.ensure_schema()
            existing = await self.get(tenant_id)
            result = await self._apply_provisioning(tenant_id, existing)
        log.info(
            "tenant provisioned",
            tenant_id=tenant_id,
            user=result.record.user_name,
            row_policies_enforced=result.record.row_policies_enforced,
            tables=len(result.record.tables),
            created=result.created,
            changed=result.changed,
        )
        return result

    async def deprovision(self, tenant_id: str) -> TenantRecord | None:
        """Remove the tenant's user, row policies and record; return the record it had, if any.

        On an enforcing engine the drop statements run even when nothing is recorded, so a
        half-finished earlier attempt is cleaned up.
        """
        validate_tenant_id(tenant_id)
        async with self._lock:
            await self.ensure_schema()
            existing = await self.get(tenant_id)
            if self.enforces_row_policies:
                recorded = existing.tables if existing else ()
                for statement in deprovision_statements(self._catalog, tenant_id, tables=recorded):
                    await self._execute(statement, None)
            if existing is not None:
                now = _now()
                await self._write(existing, await self._next_version(tenant_id), now, deleted=True)
                if existing.budget is not None:
                    await self._write_budget(tenant_id, None)
        log.info(
            "tenant deprovisioned",
            tenant_id=tenant_id,
            existed=existing is not None,
            row_policies_enforced=self.enforces_row_policies,
        )
        return existing

    async def budget_overrides(self) -> dict[str, BudgetOverride]:
        """Every tenant's budget override (what ``service.budgets.Budgets`` reads)."""
        await self.ensure_schema()
        rows = await self._backend.query_rows(
            f"SELECT tenant_id, budget FROM {_table(self._catalog, TENANT_BUDGETS_TABLE)} "  # noqa: S608
            "FINAL WHERE _is_deleted = 0"
        )
        return {str(row["tenant_id"]): BudgetOverride.from_json(str(row["budget"])) for row in rows}

    async def set_budget(self, tenant_id: str, budget: BudgetOverride | None) -> TenantRecord:
        """Give the provisioned tenant ``budget`` instead of the defaults (None or empty: clear).

        Raises NOT_FOUND when the tenant is not provisioned. Service processes apply it within
        ``budget_override_refresh_seconds``.
        """
        validate_tenant_id(tenant_id)
        async with self._lock:
            await self.ensure_schema()
            existing = await self.get(tenant_id)
            if existing is None:
                raise not_found(f"tenant {tenant_id!r} is not provisioned", tenant=tenant_id[:200])
            kept = None if budget is None or budget.empty else budget
            await self._write_budget(tenant_id, kept)
        log.info("tenant budget set", tenant_id=tenant_id, budget=kept.to_json() if kept else None)
        return replace(existing, budget=kept)

    async def _write_budget(self, tenant_id: str, budget: BudgetOverride | None) -> None:
        table = _table(self._catalog, TENANT_BUDGETS_TABLE)
        rows = await self._backend.query_rows(
            f"SELECT max(_version) AS v FROM {table} WHERE tenant_id = {{tenant:String}}",  # noqa: S608
            {"tenant": encode_text_parameter(tenant_id)},
        )
        previous = int(rows[0]["v"] or 0) if rows else 0
        data = pa.table(
            {
                "tenant_id": pa.array([tenant_id], pa.string()),
                "budget": pa.array([budget.to_json() if budget else ""], pa.string()),
                "_version": pa.array([max(time.time_ns() // 1000, previous + 1)], pa.uint64()),
                "_is_deleted": pa.array([int(budget is None)], pa.uint8()),
            }
        )
        await self._backend.insert_arrow(self._catalog.database, TENANT_BUDGETS_TABLE, data)

    async def reconcile(self, *, force: bool = False) -> list[TenantRecord]:
        """Re-apply every tenant whose recorded tables differ from the catalog's (all if ``force``).

        Run at start: when the catalog gained (or lost) a table, every tenant's row policies and
        grants follow. ``force`` also re-applies unchanged tenants (after rotating the secret).
        Returns the records that were re-applied.
        """
        async with self._lock:
            await self.ensure_schema()
            wanted = replica_tables(self._catalog)
            applied: list[TenantRecord] = []
            after = ""
            while True:
                page = await self._select(
                    "AND tenant_id > {after:String}", {"after": after}, MAX_PAGE_SIZE
                )
                for record in page:
                    stale = (
                        record.tables != wanted
                        or record.row_policies_enforced != self.enforces_row_policies
                    )
                    if force or stale:
                        result = await self._apply_provisioning(record.tenant_id, record)
                        applied.append(result.record)
                if len(page) < MAX_PAGE_SIZE:
                    break
                after = page[-1].tenant_id
        if applied:
            log.info(
                "tenants reconciled with the catalog",
                tenants=len(applied),
                tables=len(wanted),
                row_policies_enforced=self.enforces_row_policies,
            )
        return applied

    # --- internals -------------------------------------------------------------------------

    async def _apply_provisioning(
        self, tenant_id: str, existing: TenantRecord | None
    ) -> ProvisionResult:
        enforced = self.enforces_row_policies
        tables = replica_tables(self._catalog)
        user = ""
        if enforced:
            credentials = self.credentials(tenant_id)
            user = credentials.user
            await self._refuse_name_collision(tenant_id, user)
            previous = existing.tables if existing and existing.row_policies_enforced else ()
            for statement in provision_statements(
                self._catalog, tenant_id, credentials, previous_tables=previous
            ):
                await self._execute(statement, credentials)
        now = _now()
        desired = TenantRecord(
            tenant_id=tenant_id,
            user_name=user,
            row_policies_enforced=enforced,
            tables=tables,
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
        if existing is not None and existing.same_state(desired):
            return ProvisionResult(existing, created=False, changed=False)
        await self._write(desired, await self._next_version(tenant_id), now, deleted=False)
        return ProvisionResult(desired, created=existing is None, changed=True)

    async def _refuse_name_collision(self, tenant_id: str, user: str) -> None:
        rows = await self._backend.query_rows(
            f"SELECT tenant_id FROM {_table(self._catalog, TENANTS_TABLE)} FINAL "  # noqa: S608
            "WHERE user_name = {user:String} AND tenant_id != {tenant:String} "
            "AND _is_deleted = 0 LIMIT 1",
            {"user": encode_text_parameter(user), "tenant": encode_text_parameter(tenant_id)},
        )
        if rows:
            raise AnalyticsError(
                ErrorKind.INTERNAL,
                "the tenant's derived ClickHouse user name is already used by another tenant",
                "TENANT_USER_COLLISION",
                metadata={"user": user},
            )

    async def _execute(
        self, statement: AccessStatement, credentials: TenantCredentials | None
    ) -> None:
        try:
            await self._backend.command(statement.sql)
        except AnalyticsError as error:
            redacted = _redacted_error(error, credentials)
            # Not log.exception: the traceback would carry the engine's unredacted message.
            log.error(  # noqa: TRY400
                "tenant access statement failed",
                statement=statement.redacted,
                reason=redacted.reason,
                engine_code=redacted.metadata.get("engine_code", ""),
            )
            raise redacted from None

    async def _select(
        self, condition: str, parameters: Mapping[str, str], limit: int
    ) -> list[TenantRecord]:
        table = _table(self._catalog, TENANTS_TABLE)
        sql = (
            f"SELECT {_RECORD_COLUMNS} FROM {table} FINAL "  # noqa: S608
            f"WHERE _is_deleted = 0 {condition} ORDER BY tenant_id LIMIT {int(limit)}"
        )
        encoded = {name: encode_text_parameter(value) for name, value in parameters.items()}
        records = [_record(row) for row in await self._backend.query_rows(sql, encoded)]
        if not records:
            return records
        budgets = await self.budget_overrides()
        return [replace(record, budget=budgets.get(record.tenant_id)) for record in records]

    async def _next_version(self, tenant_id: str) -> int:
        """Above every version written for the tenant, tombstones included; about now in µs."""
        rows = await self._backend.query_rows(
            f"SELECT max(_version) AS v FROM {_table(self._catalog, TENANTS_TABLE)} "  # noqa: S608
            "WHERE tenant_id = {tenant:String}",
            {"tenant": encode_text_parameter(tenant_id)},
        )
        previous = int(rows[0]["v"] or 0) if rows else 0
        return max(time.time_ns() // 1000, previous + 1)

    async def _write(
        self, record: TenantRecord, version: int, now: dt.datetime, *, deleted: bool
    ) -> None:
        timestamp = pa.timestamp("us", tz="UTC")
        data = pa.table(
            {
                "tenant_id": pa.array([record.tenant_id], pa.string()),
                "user_name": pa.array([record.user_name], pa.string()),
                "row_policies_enforced": pa.array([int(record.row_policies_enforced)], pa.uint8()),
                "tables": pa.array([",".join(record.tables)], pa.string()),
                "created_at": pa.array([record.created_at], timestamp),
                "updated_at": pa.array([now if deleted else record.updated_at], timestamp),
                "_version": pa.array([version], pa.uint64()),
                "_is_deleted": pa.array([int(deleted)], pa.uint8()),
            }
        )
        await self._backend.insert_arrow(self._catalog.database, TENANTS_TABLE, data)

    async def _server_dialect(self) -> Dialect:
        if self._dialect is None:
            self._dialect = await backend_dialect(self._backend)
        return self._dialect


def _redacted_error(error: AnalyticsError, credentials: TenantCredentials | None) -> AnalyticsError:
    def clean(text: str) -> str:
        return credentials.redact(text) if credentials is not None else text

    return AnalyticsError(
        error.kind,
        clean(error.message),
        error.reason,
        list(error.violations),
        {key: clean(value) for key, value in error.metadata.items()},
    )


def _now() -> dt.datetime:
    # Microseconds, as stored, so that a record read back compares equal to the one written.
    return dt.datetime.now(dt.UTC)


def _utc(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, int):
        # The legacy layout keeps microseconds since the epoch (service.backends.dialect).
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=value)
    raise TypeError(f"not a timestamp: {value!r}")


def _record(row: Mapping[str, Any]) -> TenantRecord:
    tables: Sequence[str] = str(row["tables"]).split(",") if row["tables"] else ()
    return TenantRecord(
        tenant_id=str(row["tenant_id"]),
        user_name=str(row["user_name"]),
        row_policies_enforced=bool(row["row_policies_enforced"]),
        tables=tuple(tables),
        created_at=_utc(row["created_at"]),
        updated_at=_utc(row["updated_at"]),
    )


def record_json(record: TenantRecord, backend_name: str) -> dict[str, Any]:
    """The record in the proto3 JSON naming of ``analytics.v1.Tenant`` (for the CLI)."""
    return {
        "tenantId": record.tenant_id,
        "userName": record.user_name,
        "rowPoliciesEnforced": record.row_policies_enforced,
        "tables": list(record.tables),
        "createdAt": record.created_at.isoformat().replace("+00:00", "Z"),
        "updatedAt": record.updated_at.isoformat().replace("+00:00", "Z"),
        "enforcementDetail": enforcement_detail(record, backend_name),
        **({"budget": record.budget.json_fields()} if record.budget is not None else {}),
    }
