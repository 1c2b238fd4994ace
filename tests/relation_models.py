"""A catalog with every relation shape, shared by the unit and integration tests of relations.

deals -> contacts -> accounts (two hops; the accounts' soft delete is a bool, the contacts' a
timestamp), and an event model whose actor relates to the contacts.
"""

from __future__ import annotations

from typing import Any

from service.catalog import parse_catalog

CATALOG_DOCUMENT: dict[str, Any] = {
    "database": "relations",
    "models": [
        {
            "module": "sales",
            "name": "accounts",
            "source": "public.accounts",
            "soft_delete_column": "archived",
            "fields": {"id": "int", "plan": "enum", "region": "string?", "archived": "bool?"},
        },
        {
            "module": "sales",
            "name": "contacts",
            "source": "public.contacts",
            "soft_delete_column": "deleted_at",
            "fields": {
                "id": "int",
                "account_id": "int?",
                "country": "enum?",
                "status": "enum",
                "score": "float?",
                "deleted_at": "timestamp?",
            },
            "relations": {"account": {"field": "account_id", "target": "sales.accounts.id"}},
        },
        {
            "module": "sales",
            "name": "deals",
            "source": "public.deals",
            "soft_delete_column": "deleted_at",
            "fields": {
                "id": "int",
                "contact_id": "int?",
                "amount": "decimal(18,2)?",
                "stage": "enum",
                "created_at": "timestamp",
                "deleted_at": "timestamp?",
            },
            "relations": {"contact": {"field": "contact_id", "target": "sales.contacts.id"}},
        },
        {
            "module": "sales",
            "name": "events",
            "kind": "events",
            "events": {"actor": "contact_id"},
            "fields": {
                "event_id": "uuid",
                "event": "enum",
                "contact_id": "int",
                "timestamp": "timestamp",
            },
            "relations": {"contact": {"field": "contact_id", "target": "sales.contacts.id"}},
        },
    ],
}
CATALOG = parse_catalog(CATALOG_DOCUMENT)
