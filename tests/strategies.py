"""Hypothesis strategies shared by the compiler property tests (unit and on the engine).

A request is generated in two steps: a *shape* (model, group keys, metrics, order, limit and a
filter tree whose conditions name a field, an operator and how many values they take) and then the
*values* of the filter conditions. ``revalue`` draws new values for an existing shape, so two
requests that differ only in their values can be compared.

Type classes (what "a value of the same type class" means for the invariance property): a value
text belongs to the class of its field when the compiler accepts it and binds it with the same
parameter type, namely

* string, enum: any text at all; for like/ilike, any text that does not end in an unpaired
  backslash (the compiler rejects those patterns, which the engine cannot read);
* uuid: any UUID, in any of the spellings Python's ``uuid.UUID`` reads (canonical, upper case,
  32 hex digits, braces, ``urn:uuid:``);
* int: any integer in the signed 64-bit range, optionally with a ``+`` sign or leading zeros
  (at most 20 digits);
* float: any finite double, written with ``repr``, in exponent form or as an integer;
* decimal(P,S): any number with at most S digits after the point and at most 38-S digits before
  it (these bind as ``Decimal(38, S)``; more fractional digits or a wider value select a wider
  parameter type on purpose, so that the comparison stays exact);
* bool: ``true`` or ``false``;
* timestamp: any instant between 1901 and 2298, written naive (read in the request's time zone),
  with ``Z``, with an offset, or as a bare date;
* date: any ISO date, extended or basic format.

``engine=True`` keeps decimals within the column's own range, so that random requests also match
rows; values beyond it are covered by ``test_decimal_in_list_outside_the_column_range`` in
``tests/integration/test_compiler_on_engine.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import strategies as st

from service.catalog import FieldSpec, FieldType, Model, load_catalog
from service.query.request import MetricRequest, QueryRequest
from service.settings import DEFAULT_CATALOG

CATALOG = load_catalog(DEFAULT_CATALOG)
MODELS: tuple[Model, ...] = tuple(CATALOG.models.values())

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

#: Strings that have broken string-building SQL somewhere. Used as filter values, tenants and
#: (with a poison character, see below) as names.
HOSTILE_STRINGS: tuple[str, ...] = (
    "'",
    "''",
    '"',
    '""',
    "\\",
    "\\\\",
    "\\'",
    "a\\b",
    "{p0:String}",
    "{p1:UInt64}",
    "{tenant:String}",
    "'; DROP TABLE crm_deals; --",
    "x' OR '1'='1",
    "') OR ('1'='1",
    "1) OR (1=1",
    "*/",
    "/*",
    "-- comment",
    "#",
    "`",
    "` FROM system.tables --",
    "\n",
    "line1\nline2",
    "\r\n",
    "\t",
    "\0",
    "nul\0byte",
    "\b\f\v",
    "\x1b[31m",
    "%",
    "_",
    "*",
    "%_*",
    "\\%",
    "$1",
    "?",
    "@p0",
    ":p0",
    "NULL",
    "\\N",
    "null",
    "true",
    "tenant_a",
    "tenant_b",
    "é",
    "Ünïcödé",
    "日本語",
    "\U0001f600",
    "\u2028\u2029",
    "\ufeff",
    "\u202e",
    "(a,b)",
    'in.(a,"b")',
    "eq.x",
    "not.and",
)

#: Characters that are neither whitespace (``str.strip`` would remove them) nor structural in the
#: request syntax (``,`` splits groupBy and order, ``.`` separates order modifiers), nor allowed
#: in any identifier, alias, aggregate or time zone name. A name containing one is never valid.
POISON = "'\"`;{}()*\\\0%$?=<>!|&#@[]~^:é日\U0001f600"

#: Time zones the engine and Python agree on (the engine rejects some names Python accepts).
SAFE_TIME_ZONES: tuple[str, ...] = (
    "",
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/St_Johns",
)

INTERVALS_FOR_TIMESTAMPS = ("minute", "hour", "day", "week", "month", "quarter", "year")
INTERVALS_FOR_DATES = ("day", "week", "month", "quarter", "year")


# --- independent helpers -------------------------------------------------------------------


def quote_value(value: str) -> str:
    """A filter value as a PostgREST quoted string: ``"..."`` with ``\\`` and ``"`` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tsv_unescape(text: str) -> str:
    """Decode ClickHouse's escaped (TSV) text form, written independently of the service."""
    simple = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "0": "\0", "b": "\b", "f": "\f"}
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            nxt = text[index + 1]
            out.append(simple.get(nxt, nxt))
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def odd_trailing_backslashes(text: str) -> bool:
    """Whether a LIKE pattern ends in an unescaped backslash."""
    return (len(text) - len(text.rstrip("\\"))) % 2 == 1


def operators_for(spec: FieldSpec) -> tuple[str, ...]:
    """The filter operators the compiler accepts for a field (``is`` handled separately)."""
    ops = ["eq", "neq", "in"]
    if spec.type.is_ordered and spec.type is not FieldType.UUID:
        ops += ["gt", "gte", "lt", "lte"]
    if spec.type in (FieldType.STRING, FieldType.ENUM):
        ops += ["like", "ilike"]
    return tuple(ops)


# --- hostile text --------------------------------------------------------------------------


def hostile_text() -> st.SearchStrategy[str]:
    """Any text, weighted towards strings known to break naive SQL building."""
    return st.one_of(
        st.sampled_from(HOSTILE_STRINGS),
        st.text(max_size=40),
        # very long: a quote-backslash pattern repeated some thousands of times
        st.integers(2_000, 8_000).map(_long_hostile),
        st.builds(
            lambda a, b, c: a + b + c,
            st.sampled_from(HOSTILE_STRINGS),
            st.text(max_size=8),
            st.sampled_from(HOSTILE_STRINGS),
        ),
    )


def _long_hostile(repeat: int) -> str:
    return "'\\\"\n" * repeat


def poisoned(base: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``base`` with a poison character inserted somewhere: never a valid name of any kind."""

    @st.composite
    def build(draw: st.DrawFn) -> str:
        text = draw(base)
        position = draw(st.integers(0, len(text)))
        poison = draw(st.sampled_from(POISON))
        return text[:position] + poison + text[position:]

    return build()


def hostile_names(valid: list[str]) -> st.SearchStrategy[str]:
    """Invalid names: near misses of valid ones and hostile strings, each with a poison char."""
    pool = list(valid) + [s for s in HOSTILE_STRINGS if len(s) < 100]
    return poisoned(st.one_of(st.sampled_from(pool), st.text(max_size=20)))


# --- values by type class -------------------------------------------------------------------


def _uuid_text(value: object, form: int) -> str:
    text = str(value)
    return [
        text,
        text.upper(),
        text.replace("-", ""),
        "{" + text + "}",
        "urn:uuid:" + text,
    ][form]


def _int_text(number: int, form: int) -> str:
    if form == 1 and number >= 0:
        return f"+{number}"
    if form == 2:
        digits = str(abs(number))
        padded = digits.rjust(20, "0")
        return ("-" if number < 0 else "") + padded
    return str(number)


def _float_text(number: float, form: int) -> str:
    if form == 1:
        return f"{number:e}"
    if form == 2 and number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


@st.composite
def _decimal_text(draw: st.DrawFn, spec: FieldSpec, engine: bool) -> str:
    integer_digits = (spec.precision - spec.scale) if engine else (38 - spec.scale)
    integer_part = draw(st.integers(0, 10**integer_digits - 1))
    fraction = draw(st.text(alphabet="0123456789", max_size=spec.scale))
    sign = draw(st.sampled_from(["", "-", "+"]))
    form = draw(st.integers(0, 2))
    if form == 1 and fraction:
        # digits and a negative exponent: the same number as integer_part.fraction
        return f"{sign}{integer_part}{fraction}e-{len(fraction)}"
    if form == 2 and integer_part == 0 and fraction:
        return f"{sign}.{fraction}"
    if fraction:
        return f"{sign}{integer_part}.{fraction}"
    return f"{sign}{integer_part}" + draw(st.sampled_from(["", ".", "e0"]))


@st.composite
def _timestamp_text(draw: st.DrawFn) -> str:
    moment = draw(
        st.datetimes(min_value=dt.datetime(1901, 1, 2), max_value=dt.datetime(2298, 12, 30))
    )
    form = draw(st.integers(0, 4))
    if form == 0:
        return moment.isoformat(sep=draw(st.sampled_from(["T", " "])))
    if form == 1:
        return moment.isoformat() + "Z"
    if form == 2:
        minutes = draw(st.integers(-14 * 60, 14 * 60))
        zone = dt.timezone(dt.timedelta(minutes=minutes))
        return moment.replace(tzinfo=zone).isoformat()
    if form == 3:
        return moment.isoformat(timespec="seconds")
    return moment.date().isoformat()


def value_text(spec: FieldSpec, operator: str, *, engine: bool = False) -> st.SearchStrategy[str]:
    """One value of ``spec``'s type class (see the module docstring) for ``operator``."""
    kind = spec.type
    if kind in (FieldType.STRING, FieldType.ENUM):
        text = hostile_text()
        if operator in ("like", "ilike"):
            return text.filter(lambda s: not odd_trailing_backslashes(s))
        return text
    if kind is FieldType.UUID:
        return st.builds(_uuid_text, st.uuids(), st.integers(0, 4))
    if kind is FieldType.INT:
        return st.builds(_int_text, st.integers(INT64_MIN, INT64_MAX), st.integers(0, 2))
    if kind is FieldType.FLOAT:
        return st.builds(
            _float_text, st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 2)
        )
    if kind is FieldType.DECIMAL:
        return _decimal_text(spec, engine)
    if kind is FieldType.BOOL:
        return st.sampled_from(["true", "false"])
    if kind is FieldType.TIMESTAMP:
        return _timestamp_text()
    dates = st.dates()
    return st.builds(
        lambda d, basic: d.strftime("%Y%m%d") if basic and d.year >= 1000 else d.isoformat(),
        dates,
        st.booleans(),
    )


# --- request shapes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Cond:
    """A condition on one field; ``values`` holds raw texts (``is`` holds its operand)."""

    spec: FieldSpec
    operator: str
    negated: bool
    values: tuple[str, ...]


@dataclass(frozen=True)
class Junc:
    """``and``/``or`` of conditions and junctions."""

    kind: str
    negated: bool
    children: tuple[Cond | Junc, ...]


Node = Cond | Junc


@dataclass(frozen=True)
class Shape:
    """A valid request, before it is rendered to the request's text form."""

    model: Model
    model_ref: str
    group_by: tuple[str, ...]
    group_by_text: str
    interval: str
    aggregate: str
    field: str
    metrics: tuple[MetricRequest, ...]
    order: str
    limit: int
    offset: int
    time_zone: str
    filters: tuple[tuple[str, Node], ...]

    def mentioned_fields(self) -> set[str]:
        """Every field the filters name."""
        names: set[str] = set()

        def walk(node: Node) -> None:
            if isinstance(node, Cond):
                names.add(node.spec.name)
            else:
                for child in node.children:
                    walk(child)

        for _, node in self.filters:
            walk(node)
        return names

    def string_values(self) -> list[str]:
        """Every value bound for a string or enum field."""
        found: list[str] = []

        def walk(node: Node) -> None:
            if isinstance(node, Cond):
                if node.operator != "is" and node.spec.type in (FieldType.STRING, FieldType.ENUM):
                    found.extend(node.values)
            else:
                for child in node.children:
                    walk(child)

        for _, node in self.filters:
            walk(node)
        return found


def _render_operand(cond: Cond, *, in_tree: bool) -> str:
    """PostgREST's forms: a top-level value is literal, list and tree values are quoted."""
    textual = cond.spec.type in (FieldType.STRING, FieldType.ENUM)

    def one(value: str, quoted: bool) -> str:
        return quote_value(value) if textual and quoted else value

    if cond.operator == "is":
        return cond.values[0]
    if cond.operator == "in":
        return "(" + ",".join(one(v, True) for v in cond.values) + ")"
    return one(cond.values[0], in_tree)


def _render_expression(cond: Cond, *, in_tree: bool = False) -> str:
    operand = _render_operand(cond, in_tree=in_tree)
    return ("not." if cond.negated else "") + f"{cond.operator}.{operand}"


def _render_item(node: Node) -> str:
    if isinstance(node, Cond):
        return f"{node.spec.name}.{_render_expression(node, in_tree=True)}"
    body = ",".join(_render_item(child) for child in node.children)
    return ("not." if node.negated else "") + f"{node.kind}({body})"


def render_filters(filters: tuple[tuple[str, Node], ...]) -> dict[str, str]:
    """The request's ``filters`` map for a filter tree."""
    rendered: dict[str, str] = {}
    for key, node in filters:
        if isinstance(node, Cond):
            rendered[key] = _render_expression(node)
        else:
            rendered[key] = "(" + ",".join(_render_item(child) for child in node.children) + ")"
    return rendered


def to_request(shape: Shape) -> QueryRequest:
    """The request a client would send for ``shape``."""
    return QueryRequest(
        model=shape.model_ref,
        aggregate=shape.aggregate,
        field=shape.field,
        metrics=shape.metrics,
        group_by=shape.group_by_text,
        group_by_interval=shape.interval,
        filters=render_filters(shape.filters),
        order=shape.order,
        limit=shape.limit,
        offset=shape.offset,
        time_zone=shape.time_zone,
    )


def _value_count(operator: str) -> st.SearchStrategy[int]:
    return st.integers(1, 4) if operator == "in" else st.just(1)


def _values(
    spec: FieldSpec, operator: str, count: int, engine: bool
) -> st.SearchStrategy[tuple[str, ...]]:
    one = value_text(spec, operator, engine=engine)
    values = st.lists(one, min_size=count, max_size=count).map(tuple)
    if operator == "in" and count == 1:
        # `in.("")` parses as an empty list (pinned by a failing test in test_filters.py).
        values = values.filter(lambda v: v != ("",))
    return values


@st.composite
def _condition(draw: st.DrawFn, model: Model, engine: bool) -> Cond:
    spec = draw(st.sampled_from(list(model.fields.values())))
    negated = draw(st.booleans())
    if draw(st.integers(0, 5)) == 0:
        operands = ["null"] + (["true", "false"] if spec.type is FieldType.BOOL else [])
        return Cond(spec, "is", negated, (draw(st.sampled_from(operands)),))
    operator = draw(st.sampled_from(operators_for(spec)))
    count = draw(_value_count(operator))
    return Cond(spec, operator, negated, draw(_values(spec, operator, count, engine)))


def _node(model: Model, engine: bool, depth: int) -> st.SearchStrategy[Node]:
    leaf = _condition(model, engine)
    if depth <= 0:
        return leaf
    junction = st.builds(
        Junc,
        st.sampled_from(["and", "or"]),
        st.booleans(),
        st.lists(_node(model, engine, depth - 1), min_size=1, max_size=3).map(tuple),
    )
    return st.one_of(leaf, leaf, junction)


@st.composite
def _filters(draw: st.DrawFn, model: Model, engine: bool) -> tuple[tuple[str, Node], ...]:
    entries: list[tuple[str, Node]] = []
    conditions = draw(
        st.lists(_condition(model, engine), max_size=3, unique_by=lambda c: c.spec.name)
    )
    entries += [(c.spec.name, c) for c in conditions]
    keys = draw(
        st.lists(st.sampled_from(["and", "or", "not.and", "not.or"]), max_size=2, unique=True)
    )
    for key in keys:
        negated, kind = key.startswith("not."), key.removeprefix("not.")
        children = draw(st.lists(_node(model, engine, 2), min_size=1, max_size=3))
        entries.append((key, Junc(kind, negated, tuple(children))))
    return tuple(entries)


def metric_key(metric: MetricRequest) -> str:
    """The result key a metric gets (alias, ``count`` or ``<aggregate>_<field>``)."""
    if metric.alias:
        return metric.alias
    if metric.aggregate == "count" and not metric.field:
        return "count"
    return f"{metric.aggregate}_{metric.field}"


def _metric_choices(model: Model) -> list[MetricRequest]:
    choices = [MetricRequest("count")]
    for spec in model.fields.values():
        choices += [MetricRequest("count", spec.name), MetricRequest("count_distinct", spec.name)]
        if spec.type.is_numeric:
            choices += [
                MetricRequest(aggregate, spec.name) for aggregate in ("sum", "avg", "p50", "p95")
            ]
        if spec.type.is_ordered and spec.type is not FieldType.UUID:
            choices += [MetricRequest("min", spec.name), MetricRequest("max", spec.name)]
    return choices


@st.composite
def _metric(draw: st.DrawFn, model: Model) -> MetricRequest:
    metric = draw(st.sampled_from(_metric_choices(model)))
    alias = draw(st.sampled_from(["", "", "", "n", "total_value", "Metric_1", "x"]))
    return dataclasses.replace(metric, alias=alias)


@st.composite
def shapes(draw: st.DrawFn, *, engine: bool = False, model: Model | None = None) -> Shape:
    """A valid request shape with values."""
    model = model or draw(st.sampled_from(MODELS))
    model_ref = draw(st.sampled_from([model.name, model.qualified_name]))
    group_by = tuple(draw(st.lists(st.sampled_from(sorted(model.fields)), max_size=3, unique=True)))
    separator = draw(st.sampled_from([",", ", ", " , "]))
    group_by_text = separator.join(group_by)
    temporal = [model.fields[name] for name in group_by if model.fields[name].type.is_temporal]
    interval = ""
    if bool(temporal) and draw(st.booleans()):
        has_date = any(spec.type is FieldType.DATE for spec in temporal)
        interval = draw(
            st.sampled_from(INTERVALS_FOR_DATES if has_date else INTERVALS_FOR_TIMESTAMPS)
        )
    metrics = draw(
        st.lists(_metric(model), max_size=4, unique_by=metric_key).filter(
            lambda ms: not {metric_key(m) for m in ms} & set(group_by)
        )
    )
    aggregate = field = ""
    if metrics and not metrics[0].alias and draw(st.booleans()):
        first = metrics.pop(0)
        aggregate, field = first.aggregate, first.field
        if aggregate == "count" and field and draw(st.booleans()):
            aggregate = ""  # a bare field means count of that field
    keys = list(group_by)
    if aggregate or field:
        keys.append(metric_key(MetricRequest(aggregate or "count", field)))
    keys += [metric_key(m) for m in metrics]
    if not (aggregate or field or metrics):
        keys.append("count")
    ordered = draw(st.lists(st.sampled_from(keys), max_size=len(keys), unique=True))
    modifiers = st.sampled_from(["", ".asc", ".desc", ".desc.nullslast", ".nullsfirst"])
    order = ",".join(key + draw(modifiers) for key in ordered)
    limit = draw(st.one_of(st.just(0), st.integers(1, 10_000)))
    offset = draw(st.integers(0, 20)) if engine else draw(st.integers(0, 1_000_000))
    time_zone = draw(st.sampled_from(SAFE_TIME_ZONES))
    return Shape(
        model=model,
        model_ref=model_ref,
        group_by=group_by,
        group_by_text=group_by_text,
        interval=interval,
        aggregate=aggregate,
        field=field,
        metrics=tuple(metrics),
        order=order,
        limit=limit,
        offset=offset,
        time_zone=time_zone,
        filters=draw(_filters(model, engine)),
    )


def _revalue_node(node: Node, engine: bool, draw: st.DrawFn) -> Node:
    if isinstance(node, Junc):
        return dataclasses.replace(
            node, children=tuple(_revalue_node(c, engine, draw) for c in node.children)
        )
    if node.operator == "is":
        return node
    return dataclasses.replace(
        node, values=draw(_values(node.spec, node.operator, len(node.values), engine))
    )


def revalue(shape: Shape, *, engine: bool = False) -> st.SearchStrategy[Shape]:
    """The same shape with every filter value drawn afresh from its type class."""

    @st.composite
    def build(draw: st.DrawFn) -> Shape:
        filters = tuple((key, _revalue_node(node, engine, draw)) for key, node in shape.filters)
        return dataclasses.replace(shape, filters=filters)

    return build()


def map_string_values(shape: Shape, change: Callable[[str], str]) -> Shape:
    """The same shape with ``change`` applied to every string/enum value.

    A like/ilike pattern that would end in an unpaired backslash gets one more backslash, so that
    it stays in its type class.
    """

    def walk(node: Node) -> Node:
        if isinstance(node, Junc):
            return dataclasses.replace(node, children=tuple(walk(c) for c in node.children))
        if node.operator == "is" or node.spec.type not in (FieldType.STRING, FieldType.ENUM):
            return node
        values = tuple(change(v) for v in node.values)
        if node.operator in ("like", "ilike"):
            values = tuple(v + "\\" if odd_trailing_backslashes(v) else v for v in values)
        return dataclasses.replace(node, values=values)

    return dataclasses.replace(shape, filters=tuple((k, walk(n)) for k, n in shape.filters))


def tenants() -> st.SearchStrategy[str]:
    """Any non-empty tenant id, hostile ones included."""
    return hostile_text().filter(bool)
