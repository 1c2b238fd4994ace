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

A filter on a related field that no row without a related row can pass (``contact.status =
active``: NULL is never equal to anything) is evaluated inside the related model's subquery
instead of after the join (``pushable_filters``), and that join, and the joins on its path,
become INNER JOINs: the rows the LEFT JOIN would have filled with NULLs are exactly the rows the
filter rejects, so the answer is the same, and the hash table holds only the related rows that
pass. Only such filters move: ``is.null``, ``neq``, negated filters and anything under ``or``
stay in the outer WHERE, where a missing related row reads NULL. Newer engines make the same
rewrite themselves (outer-to-inner join conversion and filter push-down); the production minimum
(23.8) does not, and there the LEFT JOIN form built the hash table from every related row of the
tenant and filtered after the join (bench/README.md, *Join*).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence

from service.catalog import Catalog, FieldSpec, FieldType, Model, Relation
from service.query.field_paths import join_alias, resolve_field
from service.query.filters import Condition, Filter, Junction

#: Operators whose condition is never true of NULL (the related row missing reads NULL).
#: ``neq`` is left out on purpose, as is ``is`` with ``null``; ``is`` with ``true`` or ``false``
#: tests ``IS NOT NULL AND ...`` and is null-rejecting.
NULL_REJECTING_OPERATORS = frozenset({"eq", "gt", "gte", "lt", "lte", "in", "like", "ilike"})

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PushedFilter:
    """A top-level filter on a related field, to be evaluated inside the related subquery.

    ``original`` names the field as the request does (its errors and validation);
    ``condition`` names it as the related model does (``status``), for the subquery's ``t``.
    """

    path: Path
    target: Model
    original: Condition
    condition: Condition


def pushable_filters(
    model: Model, parsed: Sequence[Filter]
) -> tuple[list[Filter], list[PushedFilter]]:
    """Split the request's top-level filters into those kept in WHERE and those pushed.

    Top-level filters are ANDed, and so are the children of a top-level, non-negated ``and``:
    a null-rejecting condition among them on a related field moves into the related subquery.
    """
    kept: list[Filter] = []
    pushed: list[PushedFilter] = []
    for item in parsed:
        if isinstance(item, Junction):
            if item.kind != "and" or item.negated:
                kept.append(item)
                continue
            inner_kept, inner_pushed = pushable_filters(model, item.children)
            pushed.extend(inner_pushed)
            if len(inner_kept) == len(item.children):
                kept.append(item)
            elif len(inner_kept) == 1:
                kept.append(inner_kept[0])
            elif inner_kept:
                kept.append(dataclasses.replace(item, children=tuple(inner_kept)))
            continue
        moved = _pushed(model, item)
        if moved is None:
            kept.append(item)
        else:
            pushed.append(moved)
    return kept, pushed


def _pushed(model: Model, item: Condition) -> PushedFilter | None:
    if item.negated or "." not in item.field:
        return None
    if item.operator not in NULL_REJECTING_OPERATORS and not (
        item.operator == "is" and item.values[0] != "null"
    ):
        return None
    spec = resolve_field(model, item.field, item.source)
    if not spec.relation_path:
        return None
    target = _relation(model, spec.relation_path).target
    return PushedFilter(
        spec.relation_path, target, item, dataclasses.replace(item, field=spec.column_name)
    )


def from_clause(
    catalog: Catalog,
    model: Model,
    fields: Iterable[FieldSpec],
    tenant: str,
    *,
    guard_fields: Collection[str] = (),
    pushed: Mapping[Path, Sequence[str]] | None = None,
) -> str:
    """``model``'s table as ``t`` with FINAL, joined to every related model ``fields`` reach.

    ``tenant`` is the bound tenant placeholder. A related model's soft-delete guard is left out
    when ``guard_fields`` (the fields the request filters on) name its soft-delete column by
    path (``contact.deleted_at``), as the requested model's own guard is. ``pushed``: SQL
    conditions (over the related table as ``t``) per relation path, evaluated inside that
    path's subquery; the joins on such a path are INNER (see ``pushable_filters``).
    """
    pushed = pushed or {}
    table = f"`{catalog.database}`.`{model.table}` AS t FINAL"
    columns: dict[tuple[str, ...], set[str]] = {}
    for spec in fields:
        path = spec.relation_path
        if not path:
            continue
        columns.setdefault(path, set()).add(spec.column_name)
        for depth in range(1, len(path)):
            columns.setdefault(path[:depth], set())
    for path in pushed:
        for depth in range(1, len(path) + 1):
            columns.setdefault(path[:depth], set())
    inner = {path[:depth] for path in pushed for depth in range(1, len(path) + 1)}
    if not columns:
        return table
    joins = [table]
    for path in sorted(columns, key=lambda p: (len(p), p)):
        relation = _relation(model, path)
        deeper = {p[-1] for p in columns if len(p) == len(path) + 1 and p[:-1] == path}
        needed = columns[path] | {relation.target.relations[name].field for name in deeper}
        parent = "t" if len(path) == 1 else join_alias(path[:-1])
        subquery = _related_rows(
            catalog, relation, needed, tenant, path, guard_fields, pushed.get(path, ())
        )
        alias = join_alias(path)
        joins.append(
            f"{'INNER' if path in inner else 'LEFT'} JOIN ({subquery}) AS {alias} "
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
    conditions: Sequence[str],
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
            if spec.type is FieldType.BOOL
            else f"t.`{soft_delete}` IS NULL"
        )
    where.extend(conditions)
    return (
        f"SELECT {', '.join(select)} FROM `{catalog.database}`.`{target.table}` AS t FINAL "
        f"WHERE {' AND '.join(where)}"
    )
