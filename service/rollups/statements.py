"""The SQL of rollups, as pure functions of the catalog: tables, builds, and the read source.

A rollup's rows are partial aggregates of one *partition* of its model's replica, tagged with
that partition's id and a *generation* (``PARTITION BY (_base_partition, _generation)``)::

    tenant, _base_partition, _generation, <dimensions>, <time bucket>, _m0, _m1, ...

The measure columns are aggregate states (``countState()``, ``sumOrNullState(...)``), so any
coarser grouping merges them into exactly what the aggregate over the rows would give. A build
aggregates one replica partition with ``FINAL`` (the latest version of each row, deleted and
soft-deleted rows left out) into a new generation; the state table records which generation is
current for each partition and the partition's *signature* (its newest block and data version in
``system.parts``) read before the build. A partition whose signature is unchanged has had no
write since, so its current generation holds exactly what the replica holds; the others are
aggregated from the replica at query time (``read_source``). Replica rows never move between
partitions (``service.schema``), so each partition is answered exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from service.catalog import Catalog, FieldType, Model, Rollup, RollupMeasure
from service.query.compiler import ParameterBuilder, metric_expression, where_conditions
from service.query.request import MetricRequest
from service.query.time_buckets import bucket_start, date_bucket, timestamp_bucket_key
from service.query.values import encode_text_parameter

ROLLUP_STATE_TABLE = "_rollup_state"
#: What ``system.parts`` writes as a partition id: digits, hex, dashes, underscores.
PARTITION_ID = re.compile(r"^[0-9A-Za-z_-]{1,128}$")
#: The aggregate each measure's state is kept with (``metric_expression``'s function).
STATE_FUNCTIONS = {
    "count": "count",
    "sum": "sumOrNull",
    "avg": "avg",
    "min": "minOrNull",
    "max": "maxOrNull",
    "count_distinct": "uniqExact",
}


@dataclass(frozen=True)
class RollupPlan:
    """How one query reads a rollup: current generations, and partitions to aggregate live.

    ``current``: (replica partition, generation) pairs whose generation matches the partition's
    signature; ``stale``: replica partitions aggregated from the replica by the query itself.
    """

    rollup: Rollup
    current: tuple[tuple[str, int], ...]
    stale: tuple[str, ...]

    @property
    def name(self) -> str:
        """The rollup's name (``meta.rollup``)."""
        return self.rollup.name

    def source(self, catalog: Catalog, model: Model, tenant: str, builder: ParameterBuilder) -> str:
        """The rollup rows a query reads (``read_source``)."""
        return read_source(catalog, model, self, tenant, builder)

    def merge(self, metric: MetricRequest) -> str:
        """The merge of the measure ``metric`` is (``merge_expression``)."""
        return merge_expression(self.rollup, RollupMeasure(metric.aggregate, metric.field))

    def states(self, metric: MetricRequest) -> tuple[str, str]:
        """The state function and the column of the measure ``metric`` is (``measure_states``)."""
        return measure_states(self.rollup, RollupMeasure(metric.aggregate, metric.field))


def measure_column(rollup: Rollup, measure: RollupMeasure) -> str:
    """The column holding ``measure``'s states."""
    return f"_m{rollup.measures.index(measure)}"


def state_expression(model: Model, measure: RollupMeasure) -> str:
    """``<aggregate>State(<argument>)`` over the replica's rows ``t``: what a build stores.

    The argument is the one the query compiler aggregates, so that merging the states gives
    what ``compile_query`` computes over the rows.
    """
    builder = ParameterBuilder()
    expression, _, _ = metric_expression(
        MetricRequest(measure.aggregate, measure.field), model, "measures", builder
    )
    function = STATE_FUNCTIONS[measure.aggregate]
    if builder.parameters or not expression.startswith(f"{function}("):
        raise AssertionError(f"measure {measure.spelling} compiles to {expression}")
    return f"{function}State({expression[len(function) + 1 : -1]})"


def measure_states(rollup: Rollup, measure: RollupMeasure) -> tuple[str, str]:
    """The aggregate function of ``measure``'s states and their column of the rollup rows ``t``."""
    return STATE_FUNCTIONS[measure.aggregate], f"t.`{measure_column(rollup, measure)}`"


def merge_expression(rollup: Rollup, measure: RollupMeasure) -> str:
    """The merge of ``measure``'s states over the rollup rows ``t`` (a query's metric)."""
    function, column = measure_states(rollup, measure)
    return f"{function}Merge({column})"


def bucket_expression(model: Model, rollup: Rollup) -> str:
    """The first instant (or day) of the rollup's time bucket holding replica row ``t``'s time.

    Computed as the query compiler buckets (``service.query.time_buckets``), then stored in the
    field's own type: bucketing the stored start again at any interval the grain divides gives
    the same bucket as the row's own time.
    """
    spec = model.fields[rollup.time_field]
    column = f"t.`{spec.name}`"
    if spec.type is FieldType.DATE:
        start = date_bucket(column, rollup.grain)
    else:
        # The zone is one of the IANA names the catalog checked: letters, digits, _+-/.
        literal = f"'{rollup.time_zone}'"
        start = bucket_start(
            timestamp_bucket_key(column, rollup.grain, literal), rollup.grain, literal
        )
    return f"CAST({start} AS {spec.clickhouse_type})"


def _aggregation(
    catalog: Catalog,
    model: Model,
    rollup: Rollup,
    conditions: Sequence[str],
    labels: tuple[str, str],
) -> str:
    """SELECT of the rollup's rows from the replica rows passing ``conditions``.

    ``labels``: the SQL of the ``_base_partition`` and ``_generation`` columns.
    """
    keys = [f"t.`{model.tenant_column}`", *(f"t.`{name}`" for name in rollup.dimensions)]
    names = [model.tenant_column, *rollup.dimensions]
    if rollup.time_field:
        keys.append(bucket_expression(model, rollup))
        names.append(rollup.time_field)
    inner = [f"{key} AS _k{index}" for index, key in enumerate(keys)]
    inner += [
        f"{state_expression(model, measure)} AS _s{index}"
        for index, measure in enumerate(rollup.measures)
    ]
    grouped = (
        f"SELECT {', '.join(inner)} FROM `{catalog.database}`.`{model.table}` AS t FINAL "
        f"WHERE {' AND '.join(conditions)} GROUP BY {', '.join(f'_k{i}' for i in range(len(keys)))}"
    )
    # Internal aliases inside, the field names outside: an alias named like a column would
    # shadow it in the conditions and keys.
    outer = [
        f"_k0 AS `{names[0]}`",
        f"{labels[0]} AS _base_partition",
        f"{labels[1]} AS _generation",
    ]
    outer += [f"_k{index} AS `{name}`" for index, name in enumerate(names) if index]
    outer += [f"_s{index} AS _m{index}" for index in range(len(rollup.measures))]
    return f"SELECT {', '.join(outer)} FROM ({grouped})"


def _live_conditions(model: Model, tenant: str | None, partitions: str) -> list[str]:
    """The replica rows a rollup aggregates: live rows of the partitions (of one tenant)."""
    guards = where_conditions({}, model, ParameterBuilder(), "''", "UTC")
    if tenant is None:
        guards = guards[1:]
    else:
        guards[0] = f"t.`{model.tenant_column}` = {tenant}"
    return [*guards, f"t._partition_id IN ({partitions})"]


def table_ddl(catalog: Catalog, model: Model, rollup: Rollup) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the rollup, its column types those of a build."""
    select = _aggregation(catalog, model, rollup, ["0"], ("toString('')", "toUInt64(0)"))
    return (
        f"CREATE TABLE IF NOT EXISTS `{catalog.database}`.`{rollup.table}` "
        "ENGINE = MergeTree PARTITION BY (_base_partition, _generation) "
        f"ORDER BY `{model.tenant_column}` EMPTY AS {select}"
    )


def state_ddl(catalog: Catalog) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the state: the current generation of each partition."""
    return (
        f"CREATE TABLE IF NOT EXISTS `{catalog.database}`.`{ROLLUP_STATE_TABLE}` (\n"
        "    `rollup_table` String,\n"
        "    `base_partition` String,\n"
        "    `generation` UInt64,\n"
        "    `signature` String,\n"
        "    `rows` UInt64,\n"
        "    `built_at` DateTime64(6, 'UTC')\n"
        ") ENGINE = ReplacingMergeTree(built_at) ORDER BY (rollup_table, base_partition)"
    )


def build_statement(catalog: Catalog, model: Model, rollup: Rollup) -> str:
    """INSERT of one partition's generation (parameters ``partition`` and ``generation``)."""
    select = _aggregation(
        catalog,
        model,
        rollup,
        _live_conditions(model, None, "{partition:String}"),
        ("{partition:String}", "{generation:UInt64}"),
    )
    return f"INSERT INTO `{catalog.database}`.`{rollup.table}` {select}"


def signatures_sql() -> str:
    """The active parts of two tables, each with what its partition's signature is made of.

    Parameters ``database``, ``table`` (a replica) and ``state`` (the state table). A
    partition's signature (``partition_signatures``) changes with every insert into it (a new
    block number), every mutation (a new data version) and every re-creation of its table (a
    new directory); merges keep all three. The part paths change with merges too: they tell
    when the state table must be read again. Grouped in Python: the engine's GROUP BY costs
    more than the few rows it would save.
    """
    return (
        "SELECT table, partition_id AS partition, path, max_block_number AS block, "
        "data_version AS version FROM system.parts "
        "WHERE database = {database:String} AND table IN ({table:String}, {state:String}) "
        "AND active"
    )


def state_sql(catalog: Catalog) -> str:
    """Every rollup partition's current record: (rollup table, partition) -> generation."""
    return (
        "SELECT rollup_table, base_partition, argMax(generation, built_at) AS generation, "
        "argMax(signature, built_at) AS signature, argMax(rows, built_at) AS rows "
        f"FROM `{catalog.database}`.`{ROLLUP_STATE_TABLE}` GROUP BY rollup_table, base_partition"
    )


def read_source(
    catalog: Catalog, model: Model, plan: RollupPlan, tenant: str, builder: ParameterBuilder
) -> str:
    """The FROM source ``(...) AS t`` of a query answered by ``plan``'s rollup for ``tenant``.

    The current generations' rows, and the stale partitions aggregated from the replica in the
    same shape; each part starts with the tenant condition.
    """
    rollup = plan.rollup
    parts = []
    if plan.current:
        # A generation is one build of one partition (a nanosecond stamp), so it names the
        # partition too; a set of integers filters cheaper than one of tuples.
        generations = ", ".join(
            builder.bind("UInt64", str(generation)) for _, generation in plan.current
        )
        parts.append(
            f"SELECT * FROM `{catalog.database}`.`{rollup.table}` AS t "
            f"WHERE t.`{model.tenant_column}` = {tenant} AND t._generation IN ({generations})"
        )
    if plan.stale:
        partitions = ", ".join(
            builder.bind("String", encode_text_parameter(partition)) for partition in plan.stale
        )
        parts.append(
            _aggregation(
                catalog,
                model,
                rollup,
                _live_conditions(model, tenant, partitions),
                ("toString('')", "toUInt64(0)"),
            )
        )
    return f"({' UNION ALL '.join(parts)}) AS t"
