"""Debezium change events into typed row changes (cdc_worker/decoder.py).

The messages in ``tests/unit/debezium_messages/`` are real-shaped Kafka records (topic, key and
value as the JSON converter writes them); each file's ``_comment`` names the section of the
Debezium PostgreSQL connector documentation it is modelled on and the connector settings it
assumes. Both JSON forms are covered: without schemas (the shipped connector settings:
``decimal.handling.mode=string``, ``time.precision.mode=isostring``) and ``{schema, payload}`` with
the connector's default modes (``precise`` decimals, ``adaptive`` times).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cdc_worker.decoder import (
    MAX_DATE,
    MAX_LSN,
    MAX_TIMESTAMP,
    MIN_DATE,
    MIN_TIMESTAMP,
    DebeziumDecoder,
    change_version,
    snapshot_version,
)
from cdc_worker.events import (
    DecodedMessage,
    DecodeError,
    Heartbeat,
    Ignored,
    RowChange,
    Tombstone,
    Truncate,
)
from service.catalog import Catalog, FieldSpec, FieldType, Model
from service.schema import arrow_type

MESSAGES = Path(__file__).parent / "debezium_messages"
UTC = dt.UTC
CONTACTS = "analytics.public.contacts"
DEALS = "analytics.public.deals"
INVOICES = "analytics.public.invoices"
HEARTBEATS = "__debezium-heartbeat.analytics"
PLACEHOLDER = "__debezium_unavailable_value"


def load(name: str) -> dict[str, Any]:
    message: dict[str, Any] = json.loads((MESSAGES / f"{name}.json").read_text(encoding="utf-8"))
    return message


def encode(document: Any, *, ascii_only: bool = False) -> bytes | None:
    """The bytes Kafka's JsonConverter writes: compact JSON, UTF-8; a null value stays null."""
    if document is None:
        return None
    return json.dumps(document, ensure_ascii=ascii_only, separators=(",", ":")).encode("utf-8")


def payload(value: dict[str, Any]) -> dict[str, Any]:
    """The envelope of a value in either form."""
    inner: dict[str, Any] = value["payload"] if value.keys() == {"schema", "payload"} else value
    return inner


@pytest.fixture(scope="module")
def decoder(catalog: Catalog) -> DebeziumDecoder:
    return DebeziumDecoder(catalog)


def model(catalog: Catalog, name: str) -> Model:
    (found,) = catalog.find(name)
    return found


def decode(decoder: DebeziumDecoder, name: str) -> DecodedMessage:
    message = load(name)
    return decoder.decode(message["topic"], encode(message["key"]), encode(message["value"]))


def decode_row(decoder: DebeziumDecoder, name: str) -> RowChange:
    result = decode(decoder, name)
    assert isinstance(result, RowChange), result
    return result


def decode_value(decoder: DebeziumDecoder, topic: str, value: Any) -> DecodedMessage:
    return decoder.decode(topic, None, encode(value))


def variant(name: str, column: str, raw: Any, column_schema: dict[str, Any] | None = None) -> Any:
    """A fixture's value with one column of its row replaced (and its field schema, if given)."""
    value = copy.deepcopy(load(name)["value"])
    if column_schema is not None:
        for image in value["schema"]["fields"]:
            if image["field"] in ("before", "after"):
                image["fields"] = [
                    {**column_schema, "field": column} if field["field"] == column else field
                    for field in image["fields"]
                ]
    envelope = payload(value)
    envelope["after" if envelope["after"] is not None else "before"][column] = raw
    return value


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


def ms(text: str) -> int:
    return int(ts(text).timestamp() * 1000)


# --- the fixtures themselves ------------------------------------------------------------------


FIXTURES = sorted(path.stem for path in MESSAGES.glob("*.json"))

EXPECTED_KIND: dict[str, type] = {
    "contacts_create": RowChange,
    "contacts_create_schema": RowChange,
    "contacts_delete_default_identity": DecodeError,
    "contacts_delete_full": RowChange,
    "contacts_read": RowChange,
    "contacts_tombstone": Tombstone,
    "contacts_update_schema_toast": RowChange,
    "contacts_update_toast": RowChange,
    "deals_create": RowChange,
    "deals_delete_schema": RowChange,
    "deals_read_schema": RowChange,
    "deals_truncate": Truncate,
    "deals_truncate_schema": Truncate,
    "deals_update_full": RowChange,
    "heartbeat": Heartbeat,
    "heartbeat_schema": Heartbeat,
    "invoices_create": RowChange,
    "invoices_create_schema_double_decimal": RowChange,
    "invoices_create_schema_string_decimal": RowChange,
    "invoices_read_schema_variable_scale": RowChange,
    "invoices_update_infinity": RowChange,
    "message": Ignored,
    "unknown_table_create": Ignored,
}


def test_every_fixture_is_listed_and_cites_its_source() -> None:
    assert set(FIXTURES) == set(EXPECTED_KIND)
    for name in FIXTURES:
        message = load(name)
        assert message.keys() == {"_comment", "topic", "key", "value"}, name
        assert "debezium.io/documentation" in message["_comment"], name


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_decodes_to_its_kind(decoder: DebeziumDecoder, name: str) -> None:
    expected = EXPECTED_KIND[name]
    if expected is DecodeError:
        with pytest.raises(DecodeError):
            decode(decoder, name)
    else:
        assert type(decode(decoder, name)) is expected


def test_each_model_has_a_row_event_in_both_forms(decoder: DebeziumDecoder) -> None:
    seen: set[tuple[str, bool]] = set()
    for name in FIXTURES:
        value = load(name)["value"]
        result = decode(decoder, name) if EXPECTED_KIND[name] is RowChange else None
        if isinstance(result, RowChange):
            seen.add((result.model.name, value.keys() == {"schema", "payload"}))
    assert seen == {(m, form) for m in ("contacts", "deals", "invoices") for form in (False, True)}


# --- row events without schemas (the shipped connector settings) -------------------------------


CONTACT_ROW = {
    "tenant_id": "acme",
    "id": 1001,
    "email": "anne@example.com",
    "status": "active",
    "country": "DE",
    "lead_source": None,
    "lifetime_value": Decimal("1234.50"),
    "score": 0.75,
    "is_subscribed": True,
    "created_at": dt.datetime(2026, 3, 4, 5, 6, 7, 500000, tzinfo=UTC),
    "updated_at": dt.datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC),
    "deleted_at": None,
}


def test_create_without_schema(decoder: DebeziumDecoder, catalog: Catalog) -> None:
    change = decode_row(decoder, "contacts_create")
    assert change.model == model(catalog, "crm.contacts")
    assert (change.op, change.tenant, change.key) == ("c", "acme", (1001,))
    assert change.row == CONTACT_ROW
    assert list(change.row) == ["tenant_id", *model(catalog, "crm.contacts").fields]
    assert change.unavailable == frozenset()
    assert not change.is_deleted
    assert not change.snapshot
    assert change.source_ts_ms == ms("2026-03-04T05:06:07.5+00:00")
    # sequence ["24023119","24023128"]: the change's own LSN is above the last commit's.
    assert (change.lsn, change.last_commit_lsn) == (24023128, 24023119)
    assert change.version == 2 * 24023128 + 1
    assert change.previous_tenant is None


def test_snapshot_read_is_versioned_at_the_snapshot_position(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "contacts_read")
    assert (change.op, change.snapshot, change.is_deleted) == ("r", True, False)
    assert change.version == 2 * 22883312
    assert change.last_commit_lsn is None
    assert change.row["lead_source"] == "webinar"
    assert change.row["score"] is None
    assert change.row["lifetime_value"] == Decimal("0.00")
    assert change.row["created_at"] == dt.datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_update_with_an_unchanged_toast_value(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "contacts_update_toast")
    assert change.op == "u"
    assert change.unavailable == frozenset({"email"})
    assert change.row["email"] is None
    assert change.row["status"] == "churned"
    assert change.row["is_subscribed"] is False
    assert change.row["updated_at"] == dt.datetime(2026, 3, 5, 9, tzinfo=UTC)
    assert change.version == 2 * 24100000 + 1


def test_placeholder_outside_updates_is_data(decoder: DebeziumDecoder) -> None:
    # Inserts always carry every value: a text equal to the placeholder is the text.
    change = decode_value(decoder, CONTACTS, variant("contacts_create", "email", PLACEHOLDER))
    assert isinstance(change, RowChange)
    assert change.row["email"] == PLACEHOLDER
    assert change.unavailable == frozenset()


def test_placeholder_in_an_array_or_non_text_column_is_unavailable(
    decoder: DebeziumDecoder,
) -> None:
    value = variant("contacts_update_toast", "lifetime_value", PLACEHOLDER)
    payload(value)["after"]["lead_source"] = [PLACEHOLDER]
    change = decode_value(decoder, CONTACTS, value)
    assert isinstance(change, RowChange)
    assert change.unavailable == frozenset({"email", "lifetime_value", "lead_source"})
    assert change.row["lifetime_value"] is None


def test_placeholder_in_the_key_or_tenant_is_an_error(decoder: DebeziumDecoder) -> None:
    with pytest.raises(DecodeError, match=r"after\.id: unchanged-TOAST placeholder"):
        decode_value(decoder, CONTACTS, variant("contacts_update_toast", "id", PLACEHOLDER))
    with pytest.raises(DecodeError, match=r"after\.tenant_id: unchanged-TOAST placeholder"):
        decode_value(decoder, CONTACTS, variant("contacts_update_toast", "tenant_id", PLACEHOLDER))


def test_a_custom_placeholder(catalog: Catalog) -> None:
    custom = DebeziumDecoder(catalog, unavailable_value_placeholder="<toasted>")
    change = custom.decode(CONTACTS, None, encode(variant("contacts_update_toast", "email", "x")))
    assert isinstance(change, RowChange)
    assert change.unavailable == frozenset()
    toasted = variant("contacts_update_toast", "email", "<toasted>")
    change = custom.decode(CONTACTS, None, encode(toasted))
    assert isinstance(change, RowChange)
    assert change.unavailable == frozenset({"email"})


def test_delete_under_replica_identity_full(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "contacts_delete_full")
    assert (change.op, change.is_deleted, change.snapshot) == ("d", True, False)
    assert (change.tenant, change.key) == ("acme", (1001,))
    assert change.version == 2 * 46523128 + 1
    # Key and tenant, then NULL or the type's zero: a tombstone that inserts as is.
    assert change.row == {
        "tenant_id": "acme",
        "id": 1001,
        "email": "",
        "status": "",
        "country": "",
        "lead_source": None,
        "lifetime_value": Decimal("0.00"),
        "score": None,
        "is_subscribed": False,
        "created_at": dt.datetime(1970, 1, 1, tzinfo=UTC),
        "updated_at": dt.datetime(1970, 1, 1, tzinfo=UTC),
        "deleted_at": None,
    }


def test_delete_under_replica_identity_default_lacks_the_tenant(decoder: DebeziumDecoder) -> None:
    with pytest.raises(
        DecodeError, match=r"before\.tenant_id: the tenant is empty.*REPLICA IDENTITY"
    ):
        decode(decoder, "contacts_delete_default_identity")
    value = load("contacts_delete_default_identity")["value"]
    value["before"]["tenant_id"] = None
    with pytest.raises(DecodeError, match=r"before\.tenant_id: the tenant is null"):
        decode_value(decoder, CONTACTS, value)
    del value["before"]["tenant_id"]
    with pytest.raises(DecodeError, match=r"before\.tenant_id: tenant column missing"):
        decode_value(decoder, CONTACTS, value)


def test_tombstone(decoder: DebeziumDecoder, catalog: Catalog) -> None:
    assert decode(decoder, "contacts_tombstone") == Tombstone(model(catalog, "crm.contacts"))
    # A JSON null, or the schema wrapper around one, is a null record too.
    assert decoder.decode(CONTACTS, None, b"null") == Tombstone(model(catalog, "crm.contacts"))
    wrapped = b'{"schema":null,"payload":null}'
    assert decoder.decode(CONTACTS, None, wrapped) == Tombstone(model(catalog, "crm.contacts"))


def test_deals_create(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "deals_create")
    assert change.row == {
        "tenant_id": "acme",
        "id": 501,
        "contact_id": 1001,
        "owner_id": 7,
        "title": "Renewal 2026 \u2013 \u00fcber",
        "stage": "negotiation",
        "amount": Decimal("-250.75"),
        "currency": "EUR",
        "probability": 0.35,
        "created_at": dt.datetime(2026, 2, 1, 8, 30, 0, 250000, tzinfo=UTC),
        "closed_at": None,
        "expected_close_date": dt.date(2000, 2, 29),
        "updated_at": dt.datetime(2026, 2, 1, 8, 30, 0, 250001, tzinfo=UTC),
        "deleted_at": None,
    }


def test_update_that_moves_a_row_to_another_tenant(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "deals_update_full")
    assert (change.tenant, change.previous_tenant, change.key) == ("globex", "acme", (501,))
    assert change.row["closed_at"] == dt.datetime(2026, 2, 10, 16, tzinfo=UTC)
    # The same tenant before and after, or an identity without the tenant: nothing moved.
    same = load("deals_update_full")["value"]
    same["before"]["tenant_id"] = "globex"
    moved = decode_value(decoder, DEALS, same)
    assert isinstance(moved, RowChange)
    assert moved.previous_tenant is None
    same["before"]["tenant_id"] = ""
    moved = decode_value(decoder, DEALS, same)
    assert isinstance(moved, RowChange)
    assert moved.previous_tenant is None


def test_invoices_create(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "invoices_create")
    assert change.row == {
        "tenant_id": "acme",
        "id": 9001,
        "customer_id": 1001,
        "external_ref": "8e6f0a52-5b1c-4d3e-9f10-2a3b4c5d6e7f",
        "status": "open",
        "total": Decimal("99999.99"),
        "currency": "USD",
        "issued_at": dt.datetime(2026, 3, 31, 22, tzinfo=UTC),
        "due_date": dt.date(2026, 4, 30),
        "paid_at": None,
        "updated_at": dt.datetime(2026, 3, 31, 22, 0, 0, 1, tzinfo=UTC),
    }


def test_infinity_without_schema_is_clamped_to_the_range(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "invoices_update_infinity")
    assert change.row["paid_at"] == MAX_TIMESTAMP
    assert change.row["due_date"] == MAX_DATE
    assert change.row["updated_at"] == MAX_TIMESTAMP


# --- row events with schemas (the connector's default modes) -----------------------------------


def test_create_with_schema_precise_decimal_and_adaptive_times(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "contacts_create_schema")
    assert change.row == {
        **CONTACT_ROW,
        "lifetime_value": Decimal("1234.56"),
        "created_at": dt.datetime(2026, 3, 4, 5, 6, 7, 654321, tzinfo=UTC),
        # 06:06:07.123456+01:00
        "updated_at": dt.datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC),
    }
    assert change.version == 2 * 24023128 + 1


def test_update_with_schema_declared_placeholder_and_nan(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "contacts_update_schema_toast")
    assert change.unavailable == frozenset({"email"})
    assert change.row["email"] is None
    assert math.isnan(change.row["score"])


def test_snapshot_read_with_schema(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "deals_read_schema")
    assert (change.op, change.snapshot, change.version) == ("r", True, 2 * 22883312)
    assert change.row["amount"] == Decimal("-1234.56")
    assert change.row["created_at"] == dt.datetime(2026, 2, 1, 8, 30, 0, 250000, tzinfo=UTC)
    assert change.row["closed_at"] == dt.datetime(2026, 5, 1, 21, 30, tzinfo=UTC)
    assert change.row["expected_close_date"] == dt.date(2000, 2, 29)
    assert change.row["updated_at"] == dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert change.row["stage"] == "negotiation"


def test_delete_with_schema(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "deals_delete_schema")
    assert (change.op, change.is_deleted, change.tenant, change.key) == ("d", True, "acme", (501,))
    assert change.row["amount"] == Decimal("0.00")
    assert change.row["expected_close_date"] is None


def test_string_decimal_mode_with_schema(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "invoices_create_schema_string_decimal")
    assert change.row["total"] == Decimal("4321.09")
    assert change.row["issued_at"] == dt.datetime(2026, 3, 31, 20, tzinfo=UTC)
    assert change.row["due_date"] == dt.date(2026, 4, 30)
    assert change.row["paid_at"] == MAX_TIMESTAMP
    assert change.row["updated_at"] == MAX_TIMESTAMP


def test_double_decimal_mode_with_schema(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "invoices_create_schema_double_decimal")
    assert change.row["total"] == Decimal("1234.50")
    assert change.row["paid_at"] == MIN_TIMESTAMP
    assert change.row["updated_at"] == MIN_TIMESTAMP
    assert change.row["due_date"] == MAX_DATE  # Debezium's DATE +infinity sentinel


def test_variable_scale_decimal(decoder: DebeziumDecoder) -> None:
    change = decode_row(decoder, "invoices_read_schema_variable_scale")
    assert change.row["total"] == Decimal("123.46")  # 123.456, half up to the catalog scale
    assert change.row["paid_at"] == dt.datetime(2026, 4, 2, 9, 15, 30, 500000, tzinfo=UTC)
    assert change.snapshot


def decimal_schema(scale: int, precision: int = 18) -> dict[str, Any]:
    return {
        "type": "bytes",
        "optional": False,
        "name": "org.apache.kafka.connect.data.Decimal",
        "version": 1,
        "parameters": {"scale": str(scale), "connect.decimal.precision": str(precision)},
    }


def unscaled_base64(unscaled: int) -> str:
    """What Java's BigInteger.toByteArray gives: minimal big-endian two's complement."""
    return base64.b64encode(
        unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
    ).decode()


@pytest.mark.parametrize(
    ("encoded", "scale", "expected"),
    [
        ("AeJA", 2, "1234.56"),  # 0x01E240 = 123456
        ("/h3A", 2, "-1234.56"),  # 0xFE1DC0 = -123456
        ("/w==", 2, "-0.01"),  # 0xFF = -1
        ("AA==", 2, "0.00"),
        ("AIA=", 2, "1.28"),  # 0x0080: 128 needs the sign byte
        ("gA==", 2, "-1.28"),  # 0x80 = -128
        ("AeJA", 0, "123456.00"),
        ("AeJA", 4, "12.35"),  # 12.3456, half up to two places
        ("AeJA", -2, "12345600.00"),  # a negative scale shifts left
        (unscaled_base64(10**18 - 1), 2, "9999999999999999.99"),  # the largest decimal(18,2)
        (unscaled_base64(-(10**18) + 1), 2, "-9999999999999999.99"),
    ],
)
def test_precise_decimal_bytes(
    decoder: DebeziumDecoder, encoded: str, scale: int, expected: str
) -> None:
    value = variant("contacts_create_schema", "lifetime_value", encoded, decimal_schema(scale))
    change = decode_value(decoder, CONTACTS, value)
    assert isinstance(change, RowChange)
    assert change.row["lifetime_value"] == Decimal(expected)
    assert str(change.row["lifetime_value"]) == expected


@pytest.mark.parametrize(
    ("encoded", "schema", "fragment"),
    [
        (unscaled_base64(10**18), decimal_schema(2), "does not fit decimal"),
        ("not base64!", decimal_schema(2), "is not base64"),
        ("", decimal_schema(2), "empty decimal bytes"),
        ("AeJA", {**decimal_schema(2), "parameters": {}}, "no scale parameter"),
        ("AeJA", {**decimal_schema(2), "parameters": {"scale": "two"}}, "is not an integer"),
        ("A" * 100, decimal_schema(2), "too long"),
        ("AeJA", {"type": "bytes", "optional": False}, "bytes without a Decimal schema"),
    ],
)
def test_precise_decimal_errors(
    decoder: DebeziumDecoder, encoded: str, schema: dict[str, Any], fragment: str
) -> None:
    value = variant("contacts_create_schema", "lifetime_value", encoded, schema)
    with pytest.raises(DecodeError, match=rf"after\.lifetime_value: .*{fragment}"):
        decode_value(decoder, CONTACTS, value)


def test_precise_decimal_without_schema_explains_the_setting(decoder: DebeziumDecoder) -> None:
    with pytest.raises(DecodeError, match=r"after\.lifetime_value: 'AeJA' .*decimal\.handling"):
        decode_value(decoder, CONTACTS, variant("contacts_create", "lifetime_value", "AeJA"))


def test_decimal_as_json_number_with_schema(decoder: DebeziumDecoder) -> None:
    # Kafka's decimal.format=NUMERIC writes the Decimal logical type as a JSON number.
    value = variant("contacts_create_schema", "lifetime_value", "PLACEHOLDER", decimal_schema(2))
    text = encode(value)
    assert text is not None
    change = decoder.decode(CONTACTS, None, text.replace(b'"PLACEHOLDER"', b"1234.565"))
    assert isinstance(change, RowChange)
    assert change.row["lifetime_value"] == Decimal("1234.57")


TIMESTAMP = "2026-03-04T05:06:07.654321+00:00"


@pytest.mark.parametrize(
    ("semantic", "kind", "raw", "expected"),
    [
        ("io.debezium.time.MicroTimestamp", "int64", 1772600767654321, TIMESTAMP),
        ("io.debezium.time.Timestamp", "int64", 1772600767654, "2026-03-04T05:06:07.654+00:00"),
        (
            "org.apache.kafka.connect.data.Timestamp",
            "int64",
            1772600767654,
            "2026-03-04T05:06:07.654",
        ),
        ("io.debezium.time.NanoTimestamp", "int64", 1772600767654321987, TIMESTAMP),
        ("io.debezium.time.MicroTimestamp", "int64", -1, "1969-12-31T23:59:59.999999"),
        ("io.debezium.time.Timestamp", "int64", -1, "1969-12-31T23:59:59.999"),
        ("io.debezium.time.ZonedTimestamp", "string", "2026-03-04T05:06:07.654321Z", TIMESTAMP),
        (
            "io.debezium.time.ZonedTimestamp",
            "string",
            "2026-03-04T06:06:07.654321+01:00",
            TIMESTAMP,
        ),
        (
            "io.debezium.time.ZonedTimestamp",
            "string",
            "2026-03-04T00:06:07.654321-05:00",
            TIMESTAMP,
        ),
        (
            "io.debezium.time.ZonedTimestamp",
            "string",
            "2026-03-04T10:36:07.654321+05:30",
            TIMESTAMP,
        ),
        ("io.debezium.time.ZonedTimestamp", "string", "2026-03-04T06:06:07.654321+0100", TIMESTAMP),
        ("io.debezium.time.ZonedTimestamp", "string", "2026-03-04T05:06:07.654321987Z", TIMESTAMP),
        ("io.debezium.time.ZonedTimestamp", "string", "2026-03-04T05:06:00Z", "2026-03-04T05:06"),
        ("io.debezium.time.ZonedTimestamp", "string", "2026-03-04T05:06Z", "2026-03-04T05:06"),
        ("io.debezium.time.IsoTimestamp", "string", "2026-03-04T05:06:07.654321Z", TIMESTAMP),
        ("io.debezium.time.Date", "int32", 20516, "2026-03-04T00:00"),
        ("io.debezium.time.ZonedTimestamp", "string", "infinity", MAX_TIMESTAMP.isoformat()),
        ("io.debezium.time.ZonedTimestamp", "string", "-infinity", MIN_TIMESTAMP.isoformat()),
        (
            "io.debezium.time.MicroTimestamp",
            "int64",
            9223372036825200000,
            MAX_TIMESTAMP.isoformat(),
        ),
        ("io.debezium.time.MicroTimestamp", "int64", -9223372036832400000, "1900-01-01"),
        ("io.debezium.time.Timestamp", "int64", 9223372036825200, MAX_TIMESTAMP.isoformat()),
        ("io.debezium.time.NanoTimestamp", "int64", 2**63 - 1, MAX_TIMESTAMP.isoformat()),
        ("io.debezium.time.NanoTimestamp", "int64", -(2**63), "1900-01-01"),
        ("io.debezium.time.ZonedTimestamp", "string", "1850-06-01T00:00:00Z", "1900-01-01"),
        (
            "io.debezium.time.ZonedTimestamp",
            "string",
            "2300-01-01T00:00:00Z",
            MAX_TIMESTAMP.isoformat(),
        ),
    ],
)
def test_timestamps_with_schema(
    decoder: DebeziumDecoder, semantic: str, kind: str, raw: Any, expected: str
) -> None:
    schema = {"type": kind, "optional": False, "name": semantic, "version": 1}
    change = decode_value(
        decoder, CONTACTS, variant("contacts_create_schema", "created_at", raw, schema)
    )
    assert isinstance(change, RowChange)
    value = change.row["created_at"]
    assert value == ts(expected if "+" in expected[10:] else f"{expected}+00:00")
    assert value.tzinfo is UTC


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-03-04T05:06:07.5Z", "2026-03-04T05:06:07.5+00:00"),
        ("2026-01-02T03:04:05.123456Z", "2026-01-02T03:04:05.123456+00:00"),
        ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05+00:00"),
        ("2026-01-02T03:04:05", "2026-01-02T03:04:05+00:00"),  # no offset: UTC
        ("2026-01-02 03:04:05+02", "2026-01-02T01:04:05+00:00"),
        ("2000-02-29Z", "2000-02-29T00:00+00:00"),  # a DATE column in a timestamp field
        ("+294247-01-10T04:00:25.2Z", MAX_TIMESTAMP.isoformat()),  # isostring +infinity
        ("-290308-12-22T19:59:27.6Z", MIN_TIMESTAMP.isoformat()),  # isostring -infinity
        ("1900-01-01T00:00:00Z", MIN_TIMESTAMP.isoformat()),
        ("2299-12-31T23:59:59.999999Z", MAX_TIMESTAMP.isoformat()),
    ],
)
def test_timestamps_without_schema(decoder: DebeziumDecoder, raw: str, expected: str) -> None:
    change = decode_value(decoder, CONTACTS, variant("contacts_create", "created_at", raw))
    assert isinstance(change, RowChange)
    assert change.row["created_at"] == ts(expected)


@pytest.mark.parametrize(
    ("raw", "schema", "expected"),
    [
        ("2000-02-29Z", None, dt.date(2000, 2, 29)),  # isostring's IsoDate quirk
        ("2000-02-29", None, dt.date(2000, 2, 29)),
        (11016, None, dt.date(2000, 2, 29)),  # schemaless adaptive: days
        (11016, "io.debezium.time.Date", dt.date(2000, 2, 29)),
        (11016, "org.apache.kafka.connect.data.Date", dt.date(2000, 2, 29)),
        (-1, "io.debezium.time.Date", dt.date(1969, 12, 31)),
        ("2000-02-29T23:30:00-02:00", None, dt.date(2000, 3, 1)),  # a timestamp: its UTC day
        (951868800000, "io.debezium.time.Timestamp", dt.date(2000, 3, 1)),
        ("infinity", None, MAX_DATE),
        ("-infinity", None, MIN_DATE),
        ("-5877611-06-21Z", None, MAX_DATE),  # Debezium's DATE +infinity (sic)
        ("-5877611-06-22Z", None, MIN_DATE),  # and -infinity
        (-2147472692, "io.debezium.time.Date", MAX_DATE),
        (-2147472691, "io.debezium.time.Date", MIN_DATE),
        ("1899-12-31Z", None, MIN_DATE),
        ("+10000-01-01Z", None, MAX_DATE),
    ],
)
def test_dates(decoder: DebeziumDecoder, raw: Any, schema: str | None, expected: dt.date) -> None:
    if schema is None:
        value = variant("deals_create", "expected_close_date", raw)
    else:
        kind = "int32" if schema.endswith("Date") else "int64"
        column = {"type": kind, "optional": True, "name": schema, "version": 1}
        value = variant("deals_read_schema", "expected_close_date", raw, column)
    change = decode_value(decoder, DEALS, value)
    assert isinstance(change, RowChange)
    assert change.row["expected_close_date"] == expected
    assert type(change.row["expected_close_date"]) is dt.date


# --- both forms agree, for every field type ---------------------------------------------------

_CONNECT_TYPES: dict[FieldType, dict[str, Any]] = {
    FieldType.STRING: {"type": "string"},
    FieldType.ENUM: {"type": "string", "name": "io.debezium.data.Enum", "version": 1},
    FieldType.UUID: {"type": "string", "name": "io.debezium.data.Uuid", "version": 1},
    FieldType.INT: {"type": "int64"},
    FieldType.FLOAT: {"type": "double"},
    FieldType.BOOL: {"type": "boolean"},
    FieldType.TIMESTAMP: {"type": "int64", "name": "io.debezium.time.MicroTimestamp", "version": 1},
    FieldType.DATE: {"type": "int32", "name": "io.debezium.time.Date", "version": 1},
}


def connect_schema(spec: FieldSpec) -> dict[str, Any]:
    if spec.type is FieldType.DECIMAL:
        base = decimal_schema(spec.scale, spec.precision)
    else:
        base = dict(_CONNECT_TYPES[spec.type])
    return {**base, "optional": spec.nullable, "field": spec.name}


def field_values(spec: FieldSpec) -> st.SearchStrategy[Any]:
    text = st.text(st.characters(codec="utf-8"), max_size=20)
    values: st.SearchStrategy[Any] = {
        FieldType.STRING: text,
        FieldType.ENUM: text,
        FieldType.UUID: st.uuids().map(str),
        FieldType.INT: st.integers(-(2**63), 2**63 - 1),
        FieldType.FLOAT: st.floats(allow_nan=False),
        FieldType.DECIMAL: st.decimals(
            min_value=-(10 ** (spec.precision - spec.scale)) + 1,
            max_value=10 ** (spec.precision - spec.scale) - 1,
            places=spec.scale,
        ),
        FieldType.BOOL: st.booleans(),
        FieldType.TIMESTAMP: st.datetimes(
            min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2299, 12, 31, 23, 59, 59)
        ).map(lambda moment: moment.replace(tzinfo=UTC)),
        FieldType.DATE: st.dates(min_value=MIN_DATE, max_value=MAX_DATE),
    }[spec.type]
    return st.none() | values if spec.nullable else values


def schemaless(spec: FieldSpec, value: Any) -> Any:
    """A value as the shipped settings write it (string decimals, isostring times)."""
    if value is None:
        return None
    if spec.type is FieldType.DECIMAL:
        return format(value, "f")
    if spec.type is FieldType.TIMESTAMP:
        return value.isoformat().replace("+00:00", "Z")
    if spec.type is FieldType.DATE:
        return f"{value.isoformat()}Z"
    return value


def with_schema(spec: FieldSpec, value: Any) -> Any:
    """A value as the default modes write it (precise decimals, adaptive times)."""
    if value is None:
        return None
    if spec.type is FieldType.DECIMAL:
        return unscaled_base64(int(value.scaleb(spec.scale)))
    if spec.type is FieldType.TIMESTAMP:
        return (value - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)
    if spec.type is FieldType.DATE:
        return (value - dt.date(1970, 1, 1)).days
    return value


def row_message(target: Model, after: dict[str, Any], *, schemas: bool) -> Any:
    envelope = {
        "before": None,
        "after": after,
        "source": {
            "version": "3.7.0.Final",
            "connector": "postgresql",
            "name": "analytics",
            "ts_ms": 1772600767500,
            "snapshot": "false",
            "db": "analytics",
            "sequence": '["24023119","24023128"]',
            "schema": target.source.split(".")[0],
            "table": target.source.split(".")[1],
            "txId": 555,
            "lsn": 24023128,
            "xmin": None,
        },
        "transaction": None,
        "op": "c",
        "ts_ms": 1772600768000,
    }
    if not schemas:
        return envelope
    columns = [{"type": "string", "optional": False, "field": target.tenant_column}]
    columns += [connect_schema(spec) for spec in target.fields.values()]
    value_schema = {"type": "struct", "fields": columns, "optional": True}
    schema = {
        "type": "struct",
        "fields": [
            {**value_schema, "field": "before"},
            {**value_schema, "field": "after"},
            {"type": "struct", "fields": [], "optional": False, "field": "source"},
            {"type": "string", "optional": False, "field": "op"},
        ],
        "optional": False,
        "name": f"analytics.{target.source}.Envelope",
    }
    return {"schema": schema, "payload": envelope}


@st.composite
def model_rows(draw: st.DrawFn, catalog: Catalog) -> tuple[Model, dict[str, Any]]:
    target = draw(st.sampled_from(sorted(catalog.replicated_models(), key=lambda m: m.table)))
    row = {target.tenant_column: draw(st.text(min_size=1, max_size=10))}
    row |= {spec.name: draw(field_values(spec)) for spec in target.fields.values()}
    return target, row


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_both_forms_decode_to_the_same_row(
    decoder: DebeziumDecoder, catalog: Catalog, data: st.DataObject
) -> None:
    target, row = data.draw(model_rows(catalog))
    specs = target.fields
    plain = {name: schemaless(specs[name], v) if name in specs else v for name, v in row.items()}
    typed = {name: with_schema(specs[name], v) if name in specs else v for name, v in row.items()}
    topic = decoder.topic_for(target)
    first = decode_value(decoder, topic, row_message(target, plain, schemas=False))
    second = decode_value(decoder, topic, row_message(target, typed, schemas=True))
    assert isinstance(first, RowChange)
    assert isinstance(second, RowChange)
    assert first.row == row
    assert second.row == row
    assert first.version == second.version
    assert first.key == second.key == tuple(row[c] for c in target.primary_key)


def rows_of_every_fixture(decoder: DebeziumDecoder) -> Iterator[RowChange]:
    for name in FIXTURES:
        if EXPECTED_KIND[name] is RowChange:
            yield decode_row(decoder, name)


def test_rows_fit_the_writers_arrow_types(decoder: DebeziumDecoder) -> None:
    for change in rows_of_every_fixture(decoder):
        target = change.model
        columns = {target.tenant_column: pa.array([change.row[target.tenant_column]], pa.string())}
        for spec in target.fields.values():
            columns[spec.name] = pa.array([change.row[spec.name]], arrow_type(spec))
        table = pa.table(columns)
        for name, value in table.to_pylist()[0].items():
            original = change.row[name]
            if isinstance(original, float) and math.isnan(original):
                assert math.isnan(value)
            else:
                assert value == original, (target.name, name)


# --- truncate, heartbeat, messages and foreign topics ---------------------------------------


@pytest.mark.parametrize("name", ["deals_truncate", "deals_truncate_schema"])
def test_truncate(decoder: DebeziumDecoder, catalog: Catalog, name: str) -> None:
    assert decode(decoder, name) == Truncate(
        model=model(catalog, "crm.deals"),
        source_ts_ms=ms("2026-03-07T00:00:00+00:00"),
        version=2 * 46523128 + 1,
        lsn=46523128,
    )


@pytest.mark.parametrize("name", ["heartbeat", "heartbeat_schema"])
def test_heartbeat(decoder: DebeziumDecoder, name: str) -> None:
    assert decode(decoder, name) == Heartbeat(ts_ms=1772600768000)


def test_heartbeat_topic_follows_the_prefix(catalog: Catalog) -> None:
    other = DebeziumDecoder(catalog, "crm")
    assert other.heartbeat_topic == "__debezium-heartbeat.crm"
    assert other.decode("__debezium-heartbeat.crm", None, b'{"ts_ms":5}') == Heartbeat(5)
    assert set(other.table_topics) == {
        "crm.public.contacts",
        "crm.public.deals",
        "crm.public.invoices",
    }
    named = DebeziumDecoder(catalog, heartbeat_topic="beats")
    assert named.decode("beats", None, b'{"ts_ms":6}') == Heartbeat(6)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b'{"ts_ms":"soon"}', "heartbeat ts_ms: expected an integer"),
        (b"{}", "heartbeat ts_ms: missing"),
        (b"[1]", "expected a heartbeat object"),
        (b"{", "not valid JSON"),
    ],
)
def test_heartbeat_errors(decoder: DebeziumDecoder, value: bytes, fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment):
        decoder.decode(HEARTBEATS, None, value)


def test_logical_messages_are_ignored(decoder: DebeziumDecoder) -> None:
    result = decode(decoder, "message")
    assert isinstance(result, Ignored)
    assert "logical decoding message" in result.reason
    # op m on a table topic (a routing transform, say) is ignored as well.
    on_table = payload(load("message")["value"])
    result = decode_value(decoder, CONTACTS, on_table)
    assert isinstance(result, Ignored)
    assert "op m" in result.reason


@pytest.mark.parametrize(
    ("topic", "fragment"),
    [
        ("analytics.public.audit_log", "table 'public.audit_log' is not in the catalog"),
        ("analytics.transaction", "transaction metadata"),
        ("inventory.public.contacts", "not a change-event topic of prefix 'analytics'"),
        ("analytics", "not a change-event topic"),
    ],
)
def test_foreign_topics_are_ignored(decoder: DebeziumDecoder, topic: str, fragment: str) -> None:
    for value in (encode(load("unknown_table_create")["value"]), None, b"garbage"):
        result = decoder.decode(topic, None, value)
        assert isinstance(result, Ignored)
        assert result.topic == topic
        assert fragment in result.reason


def test_topic_for(decoder: DebeziumDecoder, catalog: Catalog) -> None:
    for target in catalog.replicated_models():
        assert decoder.table_topics[decoder.topic_for(target)] == target
    assert decoder.topic_for(model(catalog, "billing.invoices")) == INVOICES


# --- conversion and envelope errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "column", "raw", "fragment"),
    [
        ("contacts_create", "id", 1.5, "after.id: 1.5 is not an integer"),
        ("contacts_create", "id", "12.5", "after.id: '12.5' is not an integer"),
        ("contacts_create", "id", True, "after.id: expected a number, got a boolean"),
        ("contacts_create", "id", 2**63, "after.id: 9223372036854775808 is outside the int64"),
        ("contacts_create", "id", "1e30", "after.id: '1e30' is outside the int64"),
        ("contacts_create", "id", None, "after.id: null in the non-nullable int field"),
        ("contacts_create", "email", 42, "after.email: expected a string, got the number 42"),
        ("contacts_create", "email", None, "after.email: null in the non-nullable string"),
        ("contacts_create", "status", ["active"], "after.status: expected a string, got an array"),
        ("contacts_create", "lifetime_value", "abc", "after.lifetime_value: 'abc' is not a number"),
        ("contacts_create", "lifetime_value", "NaN", "cannot be stored in decimal"),
        ("contacts_create", "lifetime_value", "1e20", "does not fit decimal\\(18,2\\)"),
        ("contacts_create", "lifetime_value", "9999999999999999.995", "does not fit decimal"),
        ("contacts_create", "lifetime_value", {"scale": 2}, "expected a number, got an object"),
        ("contacts_create", "score", "fast", "after.score: 'fast' is not a number"),
        ("contacts_create", "is_subscribed", "true", "after.is_subscribed: expected true or false"),
        ("contacts_create", "is_subscribed", 1, "after.is_subscribed: expected true or false"),
        ("contacts_create", "created_at", 1772600767000, "needs its schema to tell the unit"),
        ("contacts_create", "created_at", "yesterday", "is not an ISO-8601 date or timestamp"),
        ("contacts_create", "created_at", "2026-02-30T00:00:00Z", "is not a valid date"),
        ("contacts_create", "created_at", "2026-02-01T24:00:00Z", "is not a valid time of day"),
        ("contacts_create", "created_at", "2026-02-01T10:00:00+25:00", "invalid UTC offset"),
        ("contacts_create", "created_at", 1.5, "expected a timestamp, got the number"),
        ("deals_create", "expected_close_date", "2026-13-01Z", "is not a valid date"),
        ("deals_create", "expected_close_date", False, "expected a date, got a boolean"),
        (
            "invoices_create",
            "external_ref",
            "not-a-uuid",
            "after.external_ref: 'not-a-uuid' is not",
        ),
        ("invoices_create", "external_ref", 7, "after.external_ref: expected a UUID string"),
    ],
)
def test_conversion_errors_name_the_column(
    decoder: DebeziumDecoder, fixture: str, column: str, raw: Any, fragment: str
) -> None:
    message = load(fixture)
    with pytest.raises(DecodeError, match=fragment) as caught:
        decode_value(decoder, message["topic"], variant(fixture, column, raw))
    assert isinstance(caught.value, ValueError)
    assert caught.value.reason == str(caught.value)


@pytest.mark.parametrize(
    ("fixture", "column", "raw", "expected"),
    [
        ("contacts_create", "id", "12", 12),  # NUMERIC(n,0) in an int field, string mode
        ("contacts_create", "id", 12.0, 12),
        ("contacts_create", "id", -(2**63), -(2**63)),
        ("contacts_create", "score", 3, 3.0),
        ("contacts_create", "score", "12.5", 12.5),
        ("contacts_create", "score", "Infinity", math.inf),
        ("contacts_create", "score", "-Infinity", -math.inf),
        ("contacts_create", "lifetime_value", 12, Decimal("12.00")),
        ("contacts_create", "lifetime_value", "-0.005", Decimal("-0.01")),
        ("contacts_create", "lifetime_value", "1E+3", Decimal("1000.00")),
        ("contacts_create", "email", '{"a": [1, 2]}', '{"a": [1, 2]}'),  # json/jsonb text
        ("contacts_create", "tenant_id", 42, "42"),
        (
            "invoices_create",
            "external_ref",
            "8E6F0A52-5B1C-4D3E-9F10-2A3B4C5D6E7F",
            "8e6f0a52-5b1c-4d3e-9f10-2a3b4c5d6e7f",
        ),
        (
            "invoices_create",
            "external_ref",
            "{8e6f0a525b1c4d3e9f102a3b4c5d6e7f}",
            "8e6f0a52-5b1c-4d3e-9f10-2a3b4c5d6e7f",
        ),
    ],
)
def test_accepted_spellings(
    decoder: DebeziumDecoder, fixture: str, column: str, raw: Any, expected: Any
) -> None:
    message = load(fixture)
    change = decode_value(decoder, message["topic"], variant(fixture, column, raw))
    assert isinstance(change, RowChange)
    assert change.row[column] == expected
    assert type(change.row[column]) is type(expected)


def test_nulls_in_nullable_fields(decoder: DebeziumDecoder) -> None:
    value = load("deals_create")["value"]
    for column in ("closed_at", "expected_close_date", "deleted_at"):
        value["after"][column] = None
    change = decode_value(decoder, DEALS, value)
    assert isinstance(change, RowChange)
    assert change.row["closed_at"] is change.row["expected_close_date"] is None


def envelope_with(fixture: str, path: tuple[str, ...], raw: Any) -> Any:
    value = copy.deepcopy(load(fixture)["value"])
    node = value
    for step in path[:-1]:
        node = node[step]
    if raw is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = raw
    return value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "raw", "fragment"),
    [
        (("op",), _DELETE, "the envelope has no `op`"),
        (("op",), "x", "op: unknown operation 'x'"),
        (("op",), 5, "op: unknown operation 5"),
        (("source",), _DELETE, "source: expected an object, got null"),
        (("source",), "pg", "source: expected an object, got the string 'pg'"),
        (("source", "lsn"), _DELETE, "source.lsn: missing, so the change cannot be versioned"),
        (("source", "lsn"), "24023128", "source.lsn: expected an integer"),
        (("source", "lsn"), -1, "source.lsn: -1 is negative"),
        (("source", "lsn"), 2**64, "source.lsn: .* is outside the int64 range"),
        (("source", "ts_ms"), _DELETE, "source.ts_ms: missing"),
        (("source", "ts_ms"), 1.5, "source.ts_ms: expected an integer"),
        (("source", "sequence"), "[1]", "source.sequence: expected \\[last commit LSN, LSN\\]"),
        (("source", "sequence"), '["x","1"]', "source.sequence: 'x' is not an LSN"),
        (("source", "sequence"), "[", "source.sequence: not valid JSON"),
        (("source", "sequence"), 7, "source.sequence: expected a short JSON array text"),
        (("source", "snapshot"), "maybe", "source.snapshot: unknown value 'maybe'"),
        (("source", "table"), "deals", "an event of table 'public.deals' on topic"),
        (("after",), _DELETE, "after: op c needs the row in `after`, got null"),
        (("after",), [1], "after: op c needs the row in `after`, got an array"),
        (("after", "country"), _DELETE, "after.country: column missing from the event"),
        (("after", "tenant_id"), _DELETE, "after.tenant_id: tenant column missing"),
        (("after", "tenant_id"), None, "after.tenant_id: the tenant is null"),
        (("after", "tenant_id"), True, "after.tenant_id: expected the tenant as a string"),
    ],
)
def test_envelope_errors(
    decoder: DebeziumDecoder, path: tuple[str, ...], raw: Any, fragment: str
) -> None:
    with pytest.raises(DecodeError, match=fragment):
        decode_value(decoder, CONTACTS, envelope_with("contacts_create", path, raw))


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"", "value: empty"),
        (b"{", "value: not valid JSON"),
        (b"\xff\xfe\x00", "value: not valid JSON"),
        (b"[1, 2]", "value: expected a Debezium envelope object, got an array"),
        (b'"c"', "value: expected a Debezium envelope object, got the string"),
        (b"[" * 100_000, "value: .*JSON"),
        (b'{"op": 1E+99999999999999999999}', "value: not valid JSON"),
        (b'{"op": ' + b"9" * 5000 + b"}", "value: not valid JSON"),
        (b'{"schema": 1, "payload": {}}', "value.schema: expected an object"),
        (
            b'{"schema": {"fields": 3}, "payload": {"op": "c", "source": {"lsn": 1, "ts_ms": 1},'
            b' "after": {"tenant_id": "t"}}}',
            "value.schema.fields: expected a list",
        ),
    ],
)
def test_malformed_values(decoder: DebeziumDecoder, value: bytes, fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment):
        decoder.decode(CONTACTS, None, value)


def test_delete_errors(decoder: DebeziumDecoder) -> None:
    with pytest.raises(DecodeError, match=r"before: a delete needs .* got null"):
        decode_value(decoder, CONTACTS, envelope_with("contacts_delete_full", ("before",), None))
    with pytest.raises(DecodeError, match=r"before\.id: primary key column missing"):
        decode_value(
            decoder, CONTACTS, envelope_with("contacts_delete_full", ("before", "id"), _DELETE)
        )
    with pytest.raises(DecodeError, match=r"before\.id: null in the non-nullable"):
        decode_value(
            decoder, CONTACTS, envelope_with("contacts_delete_full", ("before", "id"), None)
        )


def test_delete_does_not_decode_the_other_columns(decoder: DebeziumDecoder) -> None:
    # They are the identity's fallbacks or values nobody reads: no dead letter because of them.
    value = envelope_with("contacts_delete_full", ("before", "created_at"), "not a time")
    change = decode_value(decoder, CONTACTS, value)
    assert isinstance(change, RowChange)
    assert change.is_deleted


def test_schema_field_errors(decoder: DebeziumDecoder) -> None:
    broken = {"type": 5, "optional": False}
    with pytest.raises(
        DecodeError, match=r"value\.schema\.after\.email: schema type is not a string"
    ):
        decode_value(decoder, CONTACTS, variant("contacts_create_schema", "email", "x", broken))
    params = {"type": "string", "parameters": {"allowed": 1}}
    with pytest.raises(DecodeError, match=r"schema parameters must map strings to strings"):
        decode_value(decoder, CONTACTS, variant("contacts_create_schema", "email", "x", params))
    time_of_day = {"type": "int64", "name": "io.debezium.time.MicroTime"}
    with pytest.raises(DecodeError, match=r"after\.created_at: a time of day"):
        decode_value(
            decoder, CONTACTS, variant("contacts_create_schema", "created_at", 5, time_of_day)
        )
    plain = {"type": "int64"}
    with pytest.raises(DecodeError, match=r"after\.created_at: a number of schema 'int64'"):
        decode_value(decoder, CONTACTS, variant("contacts_create_schema", "created_at", 5, plain))


def test_decode_error_is_a_value_error() -> None:
    error = DecodeError("after.id: null")
    assert isinstance(error, ValueError)
    assert error.reason == "after.id: null"


# --- versions ---------------------------------------------------------------------------------


def test_version_functions() -> None:
    assert snapshot_version(1000) == 2000
    assert change_version(1000) == 2001
    assert change_version(1000, 900) == 2001
    assert change_version(1000, 1200) == 2 * 1201 + 1
    assert change_version(MAX_LSN) == 2**64 - 1  # still fits UInt64
    with pytest.raises(ValueError, match="outside"):
        snapshot_version(-1)
    with pytest.raises(ValueError, match="outside"):
        change_version(2**63)
    with pytest.raises(ValueError, match="outside"):
        change_version(1, MAX_LSN)


def test_a_change_at_the_snapshot_position_beats_the_snapshot_row(
    decoder: DebeziumDecoder,
) -> None:
    snapshot_row = decode_row(decoder, "contacts_read")
    value = load("contacts_create")["value"]
    value["after"]["id"] = 1000
    value["source"]["lsn"] = snapshot_row.lsn
    value["source"]["sequence"] = f'[null,"{snapshot_row.lsn}"]'
    change = decode_value(decoder, CONTACTS, value)
    assert isinstance(change, RowChange)
    assert change.key == snapshot_row.key
    assert change.version > snapshot_row.version
    # The first transaction after a snapshot has no last commit: the worker can tell.
    assert change.last_commit_lsn is None
    assert not change.snapshot


def test_an_early_change_of_a_later_transaction_beats_the_snapshot(
    decoder: DebeziumDecoder,
) -> None:
    # A transaction open at the snapshot position S changed the row before S and committed
    # after another streamed transaction: sequence [end of that commit (> S), its own LSN < S].
    snapshot_row = decode_row(decoder, "contacts_read")
    value = load("contacts_update_toast")["value"]
    value["after"]["id"] = 1000
    value["source"]["lsn"] = snapshot_row.lsn - 5000
    value["source"]["sequence"] = f'["{snapshot_row.lsn + 300}","{snapshot_row.lsn - 5000}"]'
    change = decode_value(decoder, CONTACTS, value)
    assert isinstance(change, RowChange)
    assert change.version > snapshot_row.version


@st.composite
def wal_histories(draw: st.DrawFn) -> list[tuple[int, list[tuple[int, int]], int, int]]:
    """Transactions as PostgreSQL writes them: (txid, [(row, change LSN)], commit start, end).

    Changes of concurrent transactions interleave in the WAL, but a row changed by an open
    transaction is locked until that transaction's commit record is written.
    """
    lsn = draw(st.integers(1, 10**9))
    rows, transactions = draw(st.integers(1, 4)), draw(st.integers(1, 7))
    started = 0
    open_changes: dict[int, list[tuple[int, int]]] = {}
    locks: dict[int, int] = {}
    committed: list[tuple[int, list[tuple[int, int]], int, int]] = []
    while started < transactions or open_changes:
        # Commit first: Hypothesis shrinks towards the first choice, and that one ends.
        actions = ["commit", "change"] if open_changes else []
        actions += ["begin"] if started < transactions else []
        action = draw(st.sampled_from(actions))
        if action == "begin":
            open_changes[started] = []
            started += 1
            continue
        txid = draw(st.sampled_from(sorted(open_changes)))
        size = draw(st.integers(1, 64))
        if action == "change":
            row = draw(st.integers(0, rows - 1))
            if locks.get(row, txid) != txid:
                continue
            locks[row] = txid
            open_changes[txid].append((row, lsn))
        else:
            committed.append((txid, open_changes.pop(txid), lsn, lsn + size))
            locks = {r: t for r, t in locks.items() if t != txid}
        lsn += size
    return committed


@settings(max_examples=500, deadline=None)
@given(history=wal_histories(), data=st.data())
def test_versions_follow_each_rows_history(
    history: list[tuple[int, list[tuple[int, int]], int, int]], data: st.DataObject
) -> None:
    # pgoutput streams whole transactions in commit order; Debezium's source.sequence carries
    # the end LSN of the previously streamed commit (null for the first after a start).
    last: dict[int, tuple[int, int]] = {}
    previous_end: int | None = None
    for txid, changes, _commit, end in history:
        for row, lsn in changes:
            version = change_version(lsn, previous_end)
            if row in last:
                earlier_tx, earlier = last[row]
                assert version > earlier if earlier_tx != txid else version >= earlier
            last[row] = (txid, version)
        previous_end = end
    # A snapshot at a commit boundary: rows of the transactions streamed after it get higher
    # versions than its rows, except for the first one's changes written before the snapshot
    # position (no field tells; see change_version).
    cut = data.draw(st.integers(0, len(history)))
    position = history[cut - 1][3] if cut else history[0][1][0][1] if history[0][1] else 1
    snapshot = snapshot_version(position)
    streamed = history[cut:]
    previous_end = None
    for index, (_txid, changes, _commit, end) in enumerate(streamed):
        for _row, lsn in changes:
            if index > 0 or lsn >= position:
                assert change_version(lsn, previous_end) > snapshot
        previous_end = end


# --- robustness: nothing but DecodeError, whatever the input ------------------------------------

TOPICS = [
    CONTACTS,
    DEALS,
    INVOICES,
    HEARTBEATS,
    "analytics.message",
    "analytics.public.audit_log",
    "elsewhere",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(
        [
            PLACEHOLDER,
            "infinity",
            "2000-02-29Z",
            "2026-03-04T05:06:07.5Z",
            "+294247-01-10T04:00:25.2Z",
            "AeJA",
            "1234.50",
            "NaN",
            "8e6f0a52-5b1c-4d3e-9f10-2a3b4c5d6e7f",
            '["1","2"]',
            "acme",
            "c",
            "u",
            "d",
            "r",
            "t",
            "m",
        ]
    )
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)


def accepts(decoder: DebeziumDecoder, topic: str, key: bytes | None, value: bytes | None) -> None:
    """Decoding must return a result or raise DecodeError, never a decoder bug."""
    reason = ""
    try:
        decoder.decode(topic, key, value)
    except DecodeError as error:
        reason = error.reason
    assert "internal decoder error" not in reason, reason


@settings(max_examples=500, deadline=None)
@given(
    topic=st.sampled_from(TOPICS),
    key=st.none() | st.binary(max_size=40),
    value=st.none() | st.binary(max_size=200),
)
def test_random_bytes_only_raise_decode_error(
    decoder: DebeziumDecoder, topic: str, key: bytes | None, value: bytes | None
) -> None:
    accepts(decoder, topic, key, value)


envelopes = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(["c", "u", "d", "r", "t", "m", "x"]) | json_values,
        "source": st.fixed_dictionaries(
            {},
            optional={
                "lsn": st.integers(-5, 2**64) | json_values,
                "ts_ms": st.integers() | json_values,
                "sequence": st.sampled_from(['[null,"5"]', '["4","5"]', "[]"]) | json_values,
                "snapshot": st.sampled_from(["true", "false", "last"]) | json_values,
                "schema": st.just("public") | json_values,
                "table": st.sampled_from(["contacts", "deals", "invoices"]) | json_values,
            },
        )
        | json_values,
        "before": json_values,
        "after": json_values,
    },
)


@settings(max_examples=500, deadline=None)
@given(
    topic=st.sampled_from(TOPICS),
    document=json_values
    | envelopes
    | st.fixed_dictionaries({"schema": json_values, "payload": envelopes}),
)
def test_random_json_only_raises_decode_error(
    decoder: DebeziumDecoder, topic: str, document: Any
) -> None:
    accepts(decoder, topic, None, encode(document, ascii_only=True))


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for name, child in node.items():
            yield from paths(child, (*prefix, name))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from paths(child, (*prefix, index))


@settings(max_examples=1000, deadline=None)
@given(data=st.data(), name=st.sampled_from(FIXTURES), replacement=json_values)
def test_mutated_messages_only_raise_decode_error(
    decoder: DebeziumDecoder, data: st.DataObject, name: str, replacement: Any
) -> None:
    message = load(name)
    value = message["value"]
    assume(value is not None)
    path = data.draw(st.sampled_from(list(paths(value))))
    if not path:
        value = replacement
    else:
        parent = value
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = replacement
    accepts(decoder, message["topic"], encode(message["key"]), encode(value, ascii_only=True))


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(FIXTURES),
    cut=st.integers(0, 10_000),
    flip=st.integers(0, 255),
)
def test_corrupted_bytes_only_raise_decode_error(
    decoder: DebeziumDecoder, name: str, cut: int, flip: int
) -> None:
    message = load(name)
    raw = encode(message["value"])
    assume(raw is not None)
    assert raw is not None
    position = cut % len(raw)
    corrupted = raw[:position] + bytes([flip]) + raw[position + 1 :]
    accepts(decoder, message["topic"], None, corrupted)
    accepts(decoder, message["topic"], None, raw[:position])


def test_text_that_is_not_valid_unicode_names_the_field(decoder: DebeziumDecoder) -> None:
    # A lone surrogate parses (as an escape, or as UTF-8 bytes through surrogatepass) but no Arrow
    # table can hold it: the record must be a dead letter, not a batch that never writes.
    escaped = encode(variant("deals_create", "title", "a\ud800b"), ascii_only=True)
    with pytest.raises(DecodeError, match=r"after\.title: text with a lone surrogate"):
        decoder.decode(DEALS, None, escaped)
    raw = encode(variant("deals_create", "title", "@@"))
    assert raw is not None
    with pytest.raises(DecodeError, match=r"after\.title: text with a lone surrogate"):
        decoder.decode(DEALS, None, raw.replace(b"@@", b"\xed\xa0\x80"))
    tenant = encode(variant("deals_create", "tenant_id", "\udfff"), ascii_only=True)
    with pytest.raises(DecodeError, match=r"after\.tenant_id: text with a lone surrogate"):
        decoder.decode(DEALS, None, tenant)
    moved = load("deals_update_full")["value"]
    moved["before"]["tenant_id"] = "\ud800"
    with pytest.raises(DecodeError, match=r"before\.tenant_id: text with a lone surrogate"):
        decoder.decode(DEALS, None, encode(moved, ascii_only=True))
    # A surrogate pair is one character, and other non-ASCII text is kept as it is.
    pair = encode(variant("deals_create", "title", "Bäckerei \U0001f600"), ascii_only=True)
    change = decoder.decode(DEALS, None, pair)
    assert isinstance(change, RowChange)
    assert change.row["title"] == "Bäckerei \U0001f600"
    assert pa.array([change.row["title"]], pa.string()).to_pylist() == ["Bäckerei \U0001f600"]
