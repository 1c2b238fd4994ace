"""The FROM clause of a request: its model, and a LEFT JOIN per relation its fields follow.

Shape, for ``groupBy: contact.country`` on deals::

    `db`.`crm_deals` AS t FINAL
    LEFT JOIN (
        SELECT t.`id` AS `id`, toNullable(t.`country`) AS `country`
        FROM `db`.`crm_contacts` AS t FINAL
        WHERE t.`tenant_id` = {p0:String} AND t.`_is_deleted` = 0 AND t.`deleted_at` IS NULL
    ) AS j_7contact ON t.`contact_id` = j_7contact.`id`

Each joined model is read in a subquery of its own with FINAL, its own tenant condition first
and its own deleted-row guards, so a row can only ever meet a live row of its own tenant. The
relation leads to the target's primary key, so at most one row matches and aggregates over the
requested model's rows are never multiplied. Related columns are made nullable inside the
subquery: a row whose related row is missing, deleted or soft-deleted then reads NULL there
(LEFT JOIN semantics) whatever the engine's ``join_use_nulls`` setting, and only the columns the
request uses are carried into the join's hash table, which is built from the related side.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from service.catalog import Catalog, FieldSpec, Model, Relation
from service.query.field_paths import join_alias


def from_clause(
    catalog: Catalog,
    model: Model,
    fields: Iterable[FieldSpec],
    tenant: str,
    *,
    guard_fields: Collection[str] = (),
) -> str:
    """``model``'s table as ``t`` with FINAL, joined to every related model ``fields`` reach.

    ``tenant`` is the bound tenant placeholder. A related model's soft-delete guard is left out
    when ``guard_fields`` (the fields the request filters on) name its soft-delete column by
    path (``contact.deleted_at``), as the requested model's own guard is.
    """
    table = f"`{catalog.database}`.`{model.table}` AS t FINAL"
    columns: dict[tuple[str, ...], set[str]] = {}
    for spec in fields:
        path = spec.relation_path
        if not path:
            continue
        columns.setdefault(path, set()).add(spec.column_name)
        for depth in range(1, len(path)):
            columns.setdefault(path[:depth], set())
    if not columns:
        return table
    joins = [table]
    for path in sorted(columns, key=lambda p: (len(p), p)):
        relation = _relation(model, path)
        deeper = {p[-1] for p in columns if len(p) == len(path) + 1 and p[:-1] == path}
        needed = columns[path] | {relation.target.relations[name].field for name in deeper}
        parent = "t" if len(path) == 1 else join_alias(path[:-1])
        subquery = _related_rows(catalog, relation, needed, tenant, path, guard_fields)
        alias = join_alias(path)
        joins.append(
            f"LEFT JOIN ({subquery}) AS {alias} "
            f"ON {parent}.`{relation.field}` = {alias}.`{relation.target_key}`"
        )
    return " ".join(joins)


def related_models(model: Model, fields: Iterable[FieldSpec]) -> tuple[Model, ...]:
    """The related models ``fields`` reach, each once, in a stable order."""
    paths = sorted(
        {
            spec.relation_path[:depth]
            for spec in fields
            for depth in range(1, len(spec.relation_path) + 1)
        },
        key=lambda p: (len(p), p),
    )
    found: list[Model] = []
    for path in paths:
        target = _relation(model, path).target
        if all(m.table != target.table for m in found):
            found.append(target)
    return tuple(found)


def _relation(model: Model, path: tuple[str, ...]) -> Relation:
    relation = model.relations[path[0]]
    for hop in path[1:]:
        relation = relation.target.relations[hop]
    return relation


def _related_rows(  # noqa: PLR0917 (private, one call site)
    catalog: Catalog,
    relation: Relation,
    columns: set[str],
    tenant: str,
    path: tuple[str, ...],
    guard_fields: Collection[str],
) -> str:
    """The live rows of the relation's target for the tenant, with the columns a join needs."""
    target = relation.target
    # The key too: read as a field (``contact.id``), a missing row must give NULL there.
    select = [
        f"toNullable(t.`{column}`) AS `{column}`"
        for column in sorted(columns | {relation.target_key})
    ]
    where = [f"t.`{target.tenant_column}` = {tenant}", "t.`_is_deleted` = 0"]
    soft_delete = target.soft_delete_column
    if soft_delete and ".".join((*path, soft_delete)) not in guard_fields:
        spec = target.fields[soft_delete]
        where.append(
            f"NOT ifNull(t.`{soft_delete}`, false)"
            if spec.type.value == "bool"
            else f"t.`{soft_delete}` IS NULL"
        )
    return (
        f"SELECT {', '.join(select)} FROM `{catalog.database}`.`{target.table}` AS t FINAL "
        f"WHERE {' AND '.join(where)}"
    )
