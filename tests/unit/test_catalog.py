"""The model catalog: the shipped file and every validation error of parse_catalog."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from service.catalog import (
    Catalog,
    CatalogError,
    EventFields,
    FieldSpec,
    FieldType,
    load_catalog,
    parse_catalog,
)
from service.settings import DEFAULT_CATALOG


def minimal() -> dict[str, Any]:
    """A valid two-model catalog document, as tomllib would return it."""
    return {
        "database": "analytics",
        "defaults": {"tenant_column": "tenant_id"},
        "models": [
            {
                "module": "crm",
                "name": "deals",
                "table": "crm_deals",
                "source": "public.deals",
                "primary_key": ["id"],
                "soft_delete_column": "deleted_at",
                "fields": {
                    "id": "int",
                    "stage": "enum",
                    "amount": "decimal(18,2)",
                    "deleted_at": "timestamp?",
                },
            },
            {
                "module": "billing",
                "name": "invoices",
                "fields": {"id": "int", "total": "decimal(18, 2)"},
            },
        ],
    }


def fails(document: dict[str, Any], *fragments: str) -> str:
    with pytest.raises(CatalogError) as info:
        parse_catalog(document, origin="test.toml")
    message = str(info.value)
    assert message.startswith("test.toml")
    for fragment in fragments:
        assert fragment in message, message
    return message


def with_model(change: dict[str, Any], index: int = 0) -> dict[str, Any]:
    document = copy.deepcopy(minimal())
    document["models"][index].update(change)
    return document


def with_fields(fields: dict[str, Any], **model: Any) -> dict[str, Any]:
    return with_model({"fields": fields, **model})


# --- the shipped catalog ---------------------------------------------------------------------


def test_shipped_catalog_loads() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    assert catalog.database == "analytics"
    assert sorted(catalog.models) == [
        ("billing", "invoices"),
        ("crm", "contacts"),
        ("crm", "deals"),
        ("product", "events"),
    ]
    assert [m.qualified_name for m in catalog.replicated_models()] == [
        "crm.contacts",
        "crm.deals",
        "billing.invoices",
    ]
    events = catalog.models[("product", "events")]
    assert events.is_events
    assert events.events == EventFields(
        "contact_id", "timestamp", "event", "event_id", "properties"
    )
    assert events.primary_key == ("event_id",)
    assert events.write_permission == "product.events.write"
    deals = catalog.models[("crm", "deals")]
    assert deals.table == "crm_deals"
    assert deals.source == "public.deals"
    assert deals.primary_key == ("id",)
    assert deals.tenant_column == "tenant_id"
    assert deals.soft_delete_column == "deleted_at"
    assert deals.fields["amount"] == FieldSpec("amount", FieldType.DECIMAL, False, 18, 2)
    assert deals.fields["closed_at"] == FieldSpec("closed_at", FieldType.TIMESTAMP, True)
    assert deals.qualified_name == "crm.deals"
    assert deals.read_permission == "crm.deals.read"
    invoices = catalog.models[("billing", "invoices")]
    assert invoices.soft_delete_column is None
    assert invoices.fields["external_ref"].type is FieldType.UUID
    for model in catalog.models.values():
        assert model.tenant_column not in model.fields
        assert all(not name.startswith("_") for name in model.fields)


def test_shipped_catalog_column_types() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    contacts = catalog.models[("crm", "contacts")]
    expected = {
        "id": ("Int64", "Int64"),
        "email": ("String", "String"),
        "status": ("LowCardinality(String)", "String"),
        "lead_source": ("LowCardinality(Nullable(String))", "String"),
        "lifetime_value": ("Decimal(18, 2)", "Decimal(18, 2)"),
        "score": ("Nullable(Float64)", "Float64"),
        "is_subscribed": ("Bool", "Bool"),
        "created_at": ("DateTime64(6, 'UTC')", "DateTime64(6, 'UTC')"),
        "deleted_at": ("Nullable(DateTime64(6, 'UTC'))", "DateTime64(6, 'UTC')"),
    }
    for name, (column, parameter) in expected.items():
        spec = contacts.fields[name]
        assert spec.clickhouse_type == column, name
        assert spec.parameter_type == parameter, name
    deals = catalog.models[("crm", "deals")]
    assert deals.fields["expected_close_date"].clickhouse_type == "Nullable(Date32)"
    invoices = catalog.models[("billing", "invoices")]
    assert invoices.fields["external_ref"].clickhouse_type == "UUID"


def test_find_by_bare_or_qualified_name() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    deals = catalog.models[("crm", "deals")]
    assert catalog.find("deals") == [deals]
    assert catalog.find("crm.deals") == [deals]
    assert catalog.find("billing.deals") == []
    assert catalog.find("nope") == []
    assert catalog.get("crm", "deals") is deals
    assert catalog.get("billing", "deals") is None


def test_minimal_document_and_defaults() -> None:
    catalog = parse_catalog(minimal())
    assert isinstance(catalog, Catalog)
    invoices = catalog.models[("billing", "invoices")]
    assert invoices.table == "billing_invoices"
    assert invoices.source == "public.invoices"
    assert invoices.primary_key == ("id",)
    assert invoices.tenant_column == "tenant_id"
    assert invoices.fields["total"] == FieldSpec("total", FieldType.DECIMAL, False, 18, 2)
    document = minimal()
    del document["database"], document["defaults"]
    assert parse_catalog(document).database == "analytics"


def test_tenant_column_from_defaults_and_per_model() -> None:
    document = minimal()
    document["defaults"] = {"tenant_column": "org_id"}
    document["models"][1]["tenant_column"] = "account_id"
    catalog = parse_catalog(document)
    assert catalog.models[("crm", "deals")].tenant_column == "org_id"
    assert catalog.models[("billing", "invoices")].tenant_column == "account_id"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("string", FieldSpec("f", FieldType.STRING)),
        ("enum?", FieldSpec("f", FieldType.ENUM, True)),
        ("uuid", FieldSpec("f", FieldType.UUID)),
        ("int?", FieldSpec("f", FieldType.INT, True)),
        ("float", FieldSpec("f", FieldType.FLOAT)),
        ("decimal(38,38)", FieldSpec("f", FieldType.DECIMAL, False, 38, 38)),
        ("decimal(1, 0)?", FieldSpec("f", FieldType.DECIMAL, True, 1, 0)),
        ("bool?", FieldSpec("f", FieldType.BOOL, True)),
        (" timestamp ", FieldSpec("f", FieldType.TIMESTAMP)),
        ("date?", FieldSpec("f", FieldType.DATE, True)),
    ],
)
def test_field_types(spec: str, expected: FieldSpec) -> None:
    catalog = parse_catalog(with_fields({"id": "int", "f": spec}, soft_delete_column=None))
    assert catalog.models[("crm", "deals")].fields["f"] == expected


def test_load_catalog_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[models]\nname = ", encoding="utf-8")
    with pytest.raises(CatalogError, match="not valid TOML") as info:
        load_catalog(broken)
    assert str(broken) in str(info.value)


def test_load_catalog_names_the_file_in_validation_errors(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(
        'database = "Bad-Name"\n[[models]]\nmodule = "m"\nname = "n"\n', encoding="utf-8"
    )
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(info.value).startswith(f"{path}: database")


# --- document-level errors -------------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    document = minimal()
    document["tables"] = []
    fails(document, "unknown keys ['tables']")


@pytest.mark.parametrize("database", ["Analytics", "an-alytics", "1db", "", 5, "a" * 64, "db name"])
def test_bad_database(database: Any) -> None:
    document = minimal()
    document["database"] = database
    fails(document, "test.toml: database", repr(database))


def test_defaults_must_be_a_table_with_known_keys() -> None:
    document = minimal()
    document["defaults"] = "tenant_id"
    fails(document, "defaults must be a table")
    document["defaults"] = {"tenant_column": "tenant_id", "partitions": 4}
    fails(document, "defaults", "unknown keys ['partitions']")


@pytest.mark.parametrize("models", [None, [], {}, "deals"])
def test_models_are_required(models: Any) -> None:
    document = minimal()
    if models is None:
        del document["models"]
    else:
        document["models"] = models
    fails(document, "at least one [[models]] entry")


def test_model_entry_must_be_a_table() -> None:
    document = minimal()
    document["models"].append("deals")
    fails(document, "models[2] must be a table")


# --- model-level errors ----------------------------------------------------------------------


def test_unknown_model_key() -> None:
    fails(with_model({"colour": "red"}), "models[0]", "unknown keys ['colour']")


@pytest.mark.parametrize("key", ["module", "name"])
@pytest.mark.parametrize("value", [None, "CRM", "crm-x", "9crm", "", 7, "a.b"])
def test_bad_module_or_name(key: str, value: Any) -> None:
    document = with_model({key: value})
    if value is None:
        del document["models"][0][key]
    fails(document, f"models[0].{key}", repr(value))


@pytest.mark.parametrize("table", ["Crm_Deals", "crm.deals", "", "crm deals", 3])
def test_bad_table(table: Any) -> None:
    fails(with_model({"table": table}), "models[0] (crm.deals).table", repr(table))


@pytest.mark.parametrize("source", ["public.Deals", "public.deals-x", "a.b.", 5, ""])
def test_bad_source(source: Any) -> None:
    message = fails(with_model({"source": source}), "models[0] (crm.deals).source")
    assert "lowercase identifiers" in message


def test_bad_tenant_column() -> None:
    fails(with_model({"tenant_column": "Tenant"}), "(crm.deals).tenant_column", "'Tenant'")
    document = minimal()
    document["defaults"] = {"tenant_column": "tenant id"}
    fails(document, "(crm.deals).tenant_column", "'tenant id'")


@pytest.mark.parametrize("fields", [None, {}, ["id"], "id = int"])
def test_fields_must_be_a_non_empty_table(fields: Any) -> None:
    document = with_model({"fields": fields})
    if fields is None:
        del document["models"][0]["fields"]
    fails(document, "(crm.deals).fields must be a non-empty table")


@pytest.mark.parametrize("name", ["Amount", "1st", "a-b", "a b", "a.b", "é", "a" * 64, ""])
def test_bad_field_name(name: str) -> None:
    fails(
        with_fields({"id": "int", name: "int"}, soft_delete_column=None),
        "(crm.deals).fields",
        repr(name),
    )


def test_longest_field_name_is_accepted() -> None:
    name = "a" * 63
    catalog = parse_catalog(with_fields({"id": "int", name: "int"}, soft_delete_column=None))
    assert name in catalog.models[("crm", "deals")].fields


@pytest.mark.parametrize("where", ["field", "database", "module"])
def test_identifier_with_trailing_newline_is_rejected(where: str) -> None:
    document = with_fields({"id": "int", "amount": "int"}, soft_delete_column=None)
    if where == "field":
        document["models"][0]["fields"]["amount\n"] = "int"
    elif where == "database":
        document["database"] = "analytics\n"
    else:
        document["models"][0]["module"] = "crm\n"
    with pytest.raises(CatalogError):
        parse_catalog(document)


def test_tenant_column_listed_as_a_field() -> None:
    fails(
        with_fields({"id": "int", "tenant_id": "string"}, soft_delete_column=None),
        "(crm.deals).fields.tenant_id",
        "tenant column is implicit",
    )
    document = with_fields({"id": "int", "org_id": "string"}, soft_delete_column=None)
    document["models"][0]["tenant_column"] = "org_id"
    fails(document, "(crm.deals).fields.org_id", "tenant column is implicit")
    # Listing "tenant_id" is fine when the tenant column is another one.
    document["models"][0]["fields"] = {"id": "int", "tenant_id": "string"}
    assert "tenant_id" in parse_catalog(document).models[("crm", "deals")].fields


@pytest.mark.parametrize("name", ["_version", "_is_deleted", "_x"])
def test_underscore_fields_are_reserved(name: str) -> None:
    fails(
        with_fields({"id": "int", name: "int"}, soft_delete_column=None),
        f"(crm.deals).fields.{name}",
        "reserved",
    )


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("text", "unknown type 'text'"),
        ("integer?", "unknown type 'integer'"),
        ("INT", "cannot read type 'INT'"),
        ("int(", "cannot read type 'int('"),
        ("int??", "cannot read type"),
        ("decimal(18)", "cannot read type"),
        ("decimal(-1,2)", "cannot read type"),
        ("", "cannot read type"),
        (5, "type must be a string"),
        (["int"], "type must be a string"),
        ("decimal", "decimal needs 1 <= precision <= 38"),
        ("decimal(0,0)", "decimal needs 1 <= precision <= 38"),
        ("decimal(39,2)", "decimal needs 1 <= precision <= 38"),
        ("decimal(10,11)", "decimal needs 1 <= precision <= 38, 0 <= scale <= precision"),
        ("int(3,1)", "only decimal takes (precision, scale)"),
        ("string(1,0)?", "only decimal takes (precision, scale)"),
    ],
)
def test_bad_field_types(spec: Any, fragment: str) -> None:
    fails(
        with_fields({"id": "int", "f": spec}, soft_delete_column=None),
        "(crm.deals).fields.f",
        fragment,
    )


@pytest.mark.parametrize(
    ("primary_key", "fragment"),
    [
        (["nope"], "primary_key: 'nope' is not a field"),
        (["id", "tenant_id"], "primary_key: 'tenant_id' is not a field"),
        (["note"], "primary_key: 'note' must not be nullable"),
        ([], "primary_key must be a non-empty list"),
        ("id", "primary_key must be a non-empty list"),
    ],
)
def test_bad_primary_key(primary_key: Any, fragment: str) -> None:
    document = with_fields({"id": "int", "note": "string?"}, soft_delete_column=None)
    document["models"][0]["primary_key"] = primary_key
    fails(document, f"(crm.deals).{fragment}")


def test_default_primary_key_needs_an_id_field() -> None:
    document = with_fields({"code": "string"}, soft_delete_column=None)
    del document["models"][0]["primary_key"]
    fails(document, "(crm.deals).primary_key: 'id' is not a field")


@pytest.mark.parametrize(
    ("column", "fragment"),
    [
        ("removed", "'removed' is not a field"),
        ("tenant_id", "'tenant_id' is not a field"),
        ("gone_at", "'gone_at' must be a nullable timestamp or bool"),
        ("gone_str", "'gone_str' must be a nullable timestamp or bool"),
        ("gone_date", "'gone_date' must be a nullable timestamp or bool"),
        ("gone_flag", "'gone_flag' must be a nullable timestamp or bool"),
    ],
)
def test_bad_soft_delete_column(column: str, fragment: str) -> None:
    fields = {
        "id": "int",
        "gone_at": "timestamp",
        "gone_str": "string?",
        "gone_date": "date?",
        "gone_flag": "bool",
    }
    fails(
        with_fields(fields, soft_delete_column=column),
        f"(crm.deals).soft_delete_column: {fragment}",
    )


@pytest.mark.parametrize("spec", ["timestamp?", "bool?"])
def test_good_soft_delete_columns(spec: str) -> None:
    catalog = parse_catalog(with_fields({"id": "int", "gone": spec}, soft_delete_column="gone"))
    assert catalog.models[("crm", "deals")].soft_delete_column == "gone"


def test_duplicate_model() -> None:
    document = minimal()
    twin = copy.deepcopy(document["models"][0])
    twin["table"] = "crm_deals_2"
    document["models"].append(twin)
    fails(document, "models[2]: model crm.deals is defined twice")


def test_same_name_in_two_modules_is_allowed() -> None:
    document = minimal()
    other = copy.deepcopy(document["models"][0])
    other["module"] = "sales"
    other["table"] = "sales_deals"
    document["models"].append(other)
    catalog = parse_catalog(document)
    assert len(catalog.find("deals")) == 2
    assert catalog.find("sales.deals")[0].table == "sales_deals"


def test_duplicate_table() -> None:
    document = minimal()
    document["models"][1]["table"] = "crm_deals"
    fails(document, "models[1]: table crm_deals is used by two models")


def test_duplicate_default_table() -> None:
    # crm + deals_x and crm_deals + x both default to the table crm_deals_x.
    document = minimal()
    document["models"] = [
        {"module": "crm", "name": "deals_x", "fields": {"id": "int"}},
        {"module": "crm_deals", "name": "x", "fields": {"id": "int"}},
    ]
    fails(document, "models[1]: table crm_deals_x is used by two models")


# --- event models ------------------------------------------------------------------------------


def event_model(**change: Any) -> dict[str, Any]:
    """A catalog with the minimal models plus one valid event model, changed by ``change``."""
    model: dict[str, Any] = {
        "module": "product",
        "name": "events",
        "kind": "events",
        "events": {
            "actor": "user_id",
            "timestamp": "ts",
            "event": "name",
            "event_id": "uuid",
            "properties": "props",
        },
        "fields": {"uuid": "string", "name": "enum", "user_id": "string", "ts": "timestamp"},
    }
    model.update(change)
    document = copy.deepcopy(minimal())
    document["models"].append(model)
    return document


def test_event_model_roles_and_defaults() -> None:
    catalog = parse_catalog(event_model())
    model = catalog.models[("product", "events")]
    assert model.events == EventFields("user_id", "ts", "name", "uuid", "props")
    assert model.events.key_column == "props_keys"
    assert model.table == "product_events"
    assert model.soft_delete_column is None
    assert model.watermark_column is None
    assert [m.qualified_name for m in catalog.event_models()] == ["product.events"]
    assert "product.events" not in [m.qualified_name for m in catalog.replicated_models()]
    defaults = event_model(
        events={},
        fields={"event_id": "uuid", "event": "string", "actor": "int", "timestamp": "timestamp"},
    )
    roles = parse_catalog(defaults).models[("product", "events")].events
    assert roles == EventFields("actor", "timestamp", "event", "event_id", "properties")


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"kind": "stream"}, ["kind", "'stream'", "cdc or events"]),
        ({"events": "user_id"}, ["events must be a table"]),
        ({"source": "public.events"}, ["unknown keys", "source"]),
        ({"primary_key": ["uuid"]}, ["unknown keys", "primary_key"]),
        ({"soft_delete_column": "ts"}, ["unknown keys", "soft_delete_column"]),
        (
            {"events": {"actor": "nobody", "timestamp": "ts", "event": "name", "event_id": "uuid"}},
            ["events.actor", "'nobody' is not a field"],
        ),
        (
            {"events": {"actor": "user_id", "timestamp": "name", "event": "name"}},
            ["events.timestamp", "non-nullable timestamp"],
        ),
        (
            {
                "events": {"actor": "ts", "timestamp": "ts", "event": "name", "event_id": "uuid"},
            },
            ["events.actor", "int or string or uuid"],
        ),
        (
            {
                "events": {
                    "actor": "user_id",
                    "timestamp": "ts",
                    "event": "name",
                    "event_id": "user_id",
                },
            },
            ["events.event_id", "already plays another role"],
        ),
        (
            {
                "events": {
                    "actor": "user_id",
                    "timestamp": "ts",
                    "event": "name",
                    "event_id": "uuid",
                    "properties": "name",
                },
            },
            ["events.properties", "collides"],
        ),
        (
            {
                "events": {
                    "actor": "user_id",
                    "timestamp": "ts",
                    "event": "name",
                    "event_id": "uuid",
                    "extra": "x",
                },
            },
            ["events", "unknown keys", "extra"],
        ),
    ],
)
def test_event_model_mistakes_are_named(change: dict[str, Any], fragments: list[str]) -> None:
    fails(event_model(**change), "models[2]", *fragments)


def test_event_role_must_not_be_nullable() -> None:
    document = event_model(
        fields={"uuid": "string", "name": "enum", "user_id": "string?", "ts": "timestamp"}
    )
    fails(document, "events.actor", "non-nullable")
