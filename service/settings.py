"""The one typed settings object: environment variables prefixed ``ANALYTICS_``, optional TOML file.

Every default runs on the embedded engine (chDB) with no server installed, so ``analytics serve``
works on a fresh machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CATALOG = PROJECT_ROOT / "deploy" / "catalog.toml"
DEFAULT_DATA_DIR = PROJECT_ROOT / ".data" / "chdb"
# A development secret so that `analytics demo` and `analytics token` work out of the box; the
# server logs a warning at start when it is still in use.
DEVELOPMENT_JWT_SECRET = "analytics-development-secret-change-me"  # noqa: S105
#: A legal Kafka topic name (Kafka's own rule: these characters, at most 249 of them).
KAFKA_TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"


class Settings(BaseSettings):
    """Settings of the service, the CLI and (later) the replication worker."""

    model_config = SettingsConfigDict(env_prefix="ANALYTICS_", extra="forbid")

    host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    rest_port: int | None = Field(
        8080,
        ge=0,
        le=65535,
        description="REST port (same host and process as gRPC); 0 picks a free one; "
        "None (ANALYTICS_REST_PORT=off) serves no REST.",
    )
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Where the embedded engine keeps data.")
    catalog_path: Path = Field(DEFAULT_CATALOG, description="The model catalog (TOML).")
    clickhouse_url: str | None = Field(
        None, description="ClickHouse server HTTP URL; unset selects the embedded engine."
    )
    clickhouse_user: str = Field("default", description="ClickHouse server user.")
    clickhouse_password: SecretStr | None = Field(None, description="ClickHouse server password.")
    database: str = Field(
        "analytics", pattern=r"^[a-z_][a-z0-9_]*$", description="ClickHouse database."
    )
    jwt_secret: SecretStr | None = Field(
        SecretStr(DEVELOPMENT_JWT_SECRET), description="HS256 secret for bearer tokens."
    )
    jwt_public_key: str | None = Field(
        None,
        description="RS256 public key (PEM text or a path to a PEM file); wins over the secret.",
    )
    jwt_private_key: str | None = Field(
        None, description="RS256 private key (PEM or path) used only by `analytics token`."
    )
    tenant_credential_secret: SecretStr | None = Field(
        None,
        description="Key (>= 32 bytes) tenant ClickHouse passwords are derived from (HMAC-SHA256); "
        "required where the engine enforces row policies.",
    )
    jwt_audience: str | None = Field(None, description="Required `aud` claim, if set.")
    jwt_issuer: str | None = Field(None, description="Required `iss` claim, if set.")
    tenant_claim: str = Field("tenant_id", description="Token claim that names the tenant.")
    permissions_claim: str = Field(
        "permissions",
        description="Token claim with the permission list (or a space-separated string).",
    )
    query_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest a query may run before DEADLINE_EXCEEDED."
    )
    default_limit: int = Field(
        1000, ge=1, description="Rows returned by Query when no limit is set."
    )
    max_limit: int = Field(10_000, ge=1, description="Largest limit Query accepts.")
    max_stream_limit: int = Field(
        1_000_000_000, ge=1, description="Largest limit StreamQuery accepts."
    )
    max_offset: int = Field(1_000_000, ge=0, description="Largest offset either RPC accepts.")
    stream_chunk_rows: int = Field(8192, ge=1, le=65536, description="Default rows per chunk.")
    max_concurrent_rpcs: int = Field(256, ge=1, description="RPCs served at once before refusing.")
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="gRPC message limit.")
    engine_pool_size: int = Field(
        4, ge=1, le=64, description="Embedded engine connections (queries running at once)."
    )
    grace_seconds: float = Field(5.0, ge=0, description="Shutdown grace for in-flight RPCs.")
    kafka_bootstrap_servers: str | None = Field(
        None, description="Kafka brokers (host:port,...) of the Debezium topics; unset: no CDC."
    )
    kafka_group_id: str = Field("analytics-cdc", description="Consumer group of the CDC worker.")
    kafka_group_instance_id: str = Field(
        "",
        max_length=249,
        description="Static group membership: a name that stays the same across restarts of "
        "one worker (a StatefulSet pod's name) and differs between workers; a restarted worker "
        "then takes its partitions back at once instead of after a rebalance. Empty: dynamic.",
    )
    kafka_session_timeout_seconds: float = Field(
        10.0,
        ge=6.0,
        le=300.0,
        description="How long the group keeps a silent member's partitions before it gives them "
        "to the others (with static membership, the window for a restart to take them back).",
    )
    kafka_check_crcs: bool = Field(
        False,
        description="Check each consumed record's CRC32C (aiokafka does it in software, about "
        "2 us per event; brokers check it on produce, as librdkafka's consumers assume).",
    )
    kafka_topic_prefix: str = Field(
        "analytics", description="Debezium topic.prefix: topics are <prefix>.<schema>.<table>."
    )
    dead_letter_topic: str = Field(
        "analytics.dead-letter", description="Where undecodable change events go, with the reason."
    )
    cdc_batch_max_rows: int = Field(
        50_000, ge=1, description="A CDC batch is written when it holds this many events..."
    )
    cdc_batch_max_seconds: float = Field(
        0.05, gt=0, description="...or when its oldest event has waited this long."
    )
    cdc_retry_max_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest back-off between retries of a failed ClickHouse write (the CDC "
        "worker's, the incremental loader's, the events topic consumer's).",
    )
    source_database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL DSN of the source database, read by backfills and the "
        "incremental loader; unset: neither can run.",
    )
    loader_poll_seconds: float = Field(
        1.0, gt=0, description="How often the incremental loader polls each source table."
    )
    loader_batch_rows: int = Field(
        50_000, ge=1, description="Rows the incremental loader reads and writes per batch."
    )
    loader_lookback_seconds: float = Field(
        1.0,
        ge=0,
        description="How far behind the poll's start the loader's watermark stays (write stamps "
        "that lag their commit); open transactions hold it back further.",
    )
    loader_reconcile_seconds: float = Field(
        60.0,
        ge=0,
        description="How often the loader compares replica and source keys to find hard "
        "deletes; 0: never.",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus text endpoint of the CDC worker; unset: off."
    )
    event_flush_events: int = Field(
        5_000,
        ge=1,
        description="The event sink writes once it holds this many events (group commit).",
    )
    event_flush_milliseconds: float = Field(
        50.0,
        gt=0,
        le=60_000,
        description="... or once its oldest event has waited this long, whichever comes first.",
    )
    event_buffer_events: int = Field(
        200_000,
        ge=1,
        description="Events the sink holds unwritten before it answers RESOURCE_EXHAUSTED / 429.",
    )
    event_max_request_events: int = Field(
        10_000, ge=1, description="Events one REST request or one Ingest message may carry."
    )
    event_max_future_seconds: float = Field(
        3600.0,
        ge=0,
        description="How far past the server's clock an event's timestamp may be before it is "
        "rejected.",
    )
    events_topic: str | None = Field(
        None,
        pattern=KAFKA_TOPIC_PATTERN,
        description="Kafka topic of trusted internal producers' events (tenant in the message), "
        "consumed by `serve` on kafka_bootstrap_servers; unset (or empty): not consumed.",
    )
    events_group_id: str = Field(
        "analytics-events", min_length=1, description="Consumer group of the events topic."
    )
    events_dead_letter_topic: str = Field(
        "analytics.events.dead-letter",
        pattern=KAFKA_TOPIC_PATTERN,
        description="Where events topic messages that cannot be written go, with the reason.",
    )
    result_cache: bool = Field(
        True,
        description='Answer repeated queries from the result cache (README "Result cache"): '
        "keyed by tenant, SQL and the position of every table read, so never stale.",
    )
    rollup_refresh_seconds: float = Field(
        10.0,
        ge=0,
        description="How often the service rebuilds the partitions of the catalog's rollups that "
        'changed (README "Rollups"); 0: never (``analytics rollups build`` then does it). '
        "Partitions not rebuilt yet are read from the base table, so answers are never stale; "
        "a shorter interval rebuilds a partition that keeps changing more often.",
    )
    result_cache_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Bytes of answers the in-process cache holds (least recently used dropped "
        "first); not used when redis_url is set.",
    )
    result_cache_max_entry_bytes: int = Field(
        8 * 1024 * 1024, ge=0, description="Answers larger than this are not cached."
    )
    result_cache_ttl_seconds: float = Field(
        3600.0,
        gt=0,
        description="How long Redis keeps an answer (entries of tables that moved on are never "
        "read again; this reclaims them).",
    )
    redis_url: SecretStr | None = Field(
        None,
        description="Redis (redis://host:port/db) holding the result cache and the tenants' "
        "budget counters, shared by every service process using it; unset: both in-process.",
    )
    redis_timeout_seconds: float = Field(
        0.25,
        gt=0,
        description="Longest a Redis operation may take; past it (or on any Redis error) the "
        "query is answered uncached.",
    )
    budget_requests_per_second: float = Field(
        200.0,
        ge=0,
        description="Each tenant's sustained requests per second (token bucket refill; "
        'README "Budgets"); 0: unlimited. Per tenant overrides: TenantService.SetTenantBudget.',
    )
    budget_burst: int = Field(
        400,
        ge=0,
        description="Requests a tenant's bucket holds (a burst above the rate); 0: one "
        "second's worth.",
    )
    budget_concurrent_queries: int = Field(
        32,
        ge=0,
        description="Requests of one tenant running at once (across processes sharing "
        "redis_url); 0: unlimited.",
    )
    budget_rows_per_query: int = Field(
        5_000_000_000,
        ge=0,
        description="Rows one query of a tenant may read; the engine stops it past that "
        "(max_rows_to_read, read_overflow_mode='throw'); 0: unlimited.",
    )
    budget_seconds_per_query: float = Field(
        0.0,
        ge=0,
        description="Time one query of a tenant may run, when less than query_timeout_seconds "
        "(the engine's max_execution_time; over it: RESOURCE_EXHAUSTED); 0: only "
        "query_timeout_seconds applies.",
    )
    budget_override_refresh_seconds: float = Field(
        5.0,
        gt=0,
        description="How often a service process reads the tenants' budget overrides again.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: readable on a terminal, JSON otherwise."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")

    @field_validator("rest_port", mode="before")
    @classmethod
    def _rest_port_off(cls, value: object) -> object:
        # An environment variable cannot be None: "off" (or empty) disables the REST site.
        if isinstance(value, str) and value.strip().lower() in ("", "off", "none"):
            return None
        return value

    @field_validator("events_topic", "redis_url", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        # As for rest_port: an environment variable cannot be None, an empty one means off.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.events_topic is not None:
            if not self.kafka_bootstrap_servers:
                raise ValueError("events_topic needs kafka_bootstrap_servers")
            if self.events_topic == self.events_dead_letter_topic:
                # Dead letters would be consumed again and dead-lettered again, forever.
                raise ValueError("events_dead_letter_topic must differ from events_topic")
        if self.redis_url is not None and not self.redis_url.get_secret_value().startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        if self.default_limit > self.max_limit:
            raise ValueError("default_limit must not exceed max_limit")
        if self.jwt_secret is None and self.jwt_public_key is None:
            raise ValueError("set jwt_secret (HS256) or jwt_public_key (RS256)")
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value().encode()) < 32:
            raise ValueError("jwt_secret must be at least 32 bytes (RFC 7518 section 3.2)")
        return self

    @property
    def uses_development_secret(self) -> bool:
        """Whether tokens are still verified with the built-in development secret."""
        return (
            self.jwt_public_key is None
            and self.jwt_secret is not None
            and self.jwt_secret.get_secret_value() == DEVELOPMENT_JWT_SECRET
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read, in order of precedence: arguments, environment, ``ANALYTICS_CONFIG`` TOML file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("ANALYTICS_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def read_key_material(value: str) -> str:
    """Return PEM text given either the text itself or a path to a file holding it."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    return Path(value).read_text(encoding="utf-8")
