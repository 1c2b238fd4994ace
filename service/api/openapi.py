"""The OpenAPI 3.1 document of the REST endpoint, served at ``GET /v1/openapi.json``.

Written by hand to read well, kept honest by tests: the request schema's properties are the
proto3 JSON names of ``QueryRequest`` (a unit test compares them) and schemathesis checks the
served endpoint against the whole document.
"""

from __future__ import annotations

from typing import Any

from service.api.interceptors import TRACE_HEADER
from service.api.problem import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE
from service.catalog import Catalog

QUERY_PATH = "/v1/data/{module}/analytics"
OPENAPI_PATH = "/v1/openapi.json"
COLUMN_TYPES = ("string", "int", "float", "decimal", "bool", "timestamp", "date")
_UINT32_MAX = 2**32 - 1

_METRIC = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "aggregate": {
            "type": "string",
            "description": "count, sum, avg, min, max, count_distinct, or a percentile p1..p99.",
        },
        "field": {"type": "string", "description": "The model field; empty only for count."},
        "alias": {
            "type": "string",
            "description": "The metric's key in each row; default count or <aggregate>_<field>.",
        },
    },
}

_QUERY_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "description": "The proto3 JSON of analytics.v1.QueryRequest, as grpcurl takes it (the "
    "proto field names, such as group_by, are accepted too). Unknown properties are refused.",
    "properties": {
        "model": {
            "type": "string",
            "description": "A model of the path's module (deals), or module.model of that module.",
        },
        "aggregate": {"type": "string", "description": "The main aggregate; empty means count."},
        "field": {"type": "string", "description": "The field the main aggregate reads."},
        "metrics": {"type": "array", "items": {"$ref": "#/components/schemas/Metric"}},
        "groupBy": {"type": "string", "description": "One field, or several separated by commas."},
        "groupByInterval": {
            "type": "string",
            "description": "minute, hour, day, week, month, quarter or year.",
        },
        "filters": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Field to PostgREST condition (eq.closed_won, not.in.(a,b), is.null); "
            "the keys and/or take a parenthesised list of field.op.value conditions.",
        },
        "order": {"type": "string", "description": "key.asc or key.desc, comma-separated."},
        "limit": {"type": "integer", "minimum": 0, "maximum": _UINT32_MAX},
        "offset": {"type": "integer", "minimum": 0, "maximum": _UINT32_MAX},
        "timeZone": {"type": "string", "description": "IANA time zone; default UTC."},
    },
}

_QUERY_RESPONSE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["data", "meta"],
    "properties": {
        "data": {
            "type": "array",
            "description": "Result rows keyed by group field and metric key. Integers beyond "
            "2^53 and decimals of more than 15 significant digits are exact decimal strings.",
            "items": {
                "type": "object",
                "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
            },
        },
        "meta": {"$ref": "#/components/schemas/QueryMeta"},
    },
}

_QUERY_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["lastSyncAt", "rowsScanned", "durationMs", "columns", "cacheHit"],
    "properties": {
        "lastSyncAt": {
            "type": ["string", "null"],
            "format": "date-time",
            "description": "Source time up to which the model's table is known complete.",
        },
        "rowsScanned": {"type": "integer", "minimum": 0},
        "durationMs": {"type": "integer", "minimum": 0},
        "cacheHit": {
            "type": "boolean",
            "description": "Whether the answer came from the result cache (always equal to a "
            'fresh one: README "Result cache"); rowsScanned and durationMs are then those of the '
            "run that computed it.",
        },
        "rollup": {
            "type": "string",
            "description": 'The catalog rollup that answered (README "Rollups"); absent when the '
            "model's own rows did. Its answer equals the base table's.",
        },
        "columns": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "type"],
                "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string", "enum": list(COLUMN_TYPES)},
                },
            },
        },
    },
}

_PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details. type is "
    f"{PROBLEM_TYPE_BASE}<suffix>, the suffix being not-found, validation-error, forbidden, "
    "unauthorized, gateway-timeout, unavailable (DESIGN.md section 5) or, for failures outside "
    "that table, the HTTP status phrase (method-not-allowed, request-entity-too-large, internal).",
    "required": ["type", "title", "status", "detail", "code", "traceId"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {
            "type": "string",
            "description": "The reason, as in the gRPC ErrorInfo: UNKNOWN_FIELD, INVALID_FILTER...",
        },
        "field": {"type": "string", "description": "The first offending request field."},
        "violations": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "description"],
                "properties": {"field": {"type": "string"}, "description": {"type": "string"}},
            },
        },
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "traceId": {"type": "string"},
    },
}


def _problem_response(description: str, **extra_headers: Any) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {TRACE_HEADER: {"$ref": "#/components/headers/TraceId"}, **extra_headers},
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def openapi_document(catalog: Catalog) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the REST endpoint, naming the catalog's models."""
    models = ", ".join(sorted(m.qualified_name for m in catalog.models.values()))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Analytics data layer",
            "version": "1.0.0",
            "description": "Tenant-safe aggregation queries over the replicated models. The "
            "same request and response as gRPC analytics.v1.AnalyticsService/Query.",
        },
        "paths": {
            QUERY_PATH: {
                "post": {
                    "operationId": "query",
                    "summary": "Run one aggregation and return every row",
                    "description": f"Models: {models}. The tenant comes from the bearer token; "
                    "the caller needs the permission {module}.{model}.read.",
                    "security": [{"bearerAuth": []}],
                    "parameters": [
                        {
                            "name": "module",
                            "in": "path",
                            "required": True,
                            "description": "The module whose model the request names (crm).",
                            "schema": {"type": "string", "minLength": 1},
                        },
                        {
                            "name": "traceparent",
                            "in": "header",
                            "required": False,
                            "description": "W3C trace context; its trace id is returned in "
                            f"{TRACE_HEADER} (a new one when absent).",
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/QueryRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The result rows and how they were produced.",
                            "headers": {TRACE_HEADER: {"$ref": "#/components/headers/TraceId"}},
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/QueryResponse"}
                                }
                            },
                        },
                        "400": _problem_response(
                            "validation-error: bad JSON, property, aggregate, filter, interval, "
                            "value or limit; code UNKNOWN_FIELD for a field the model lacks."
                        ),
                        "401": _problem_response(
                            "unauthorized: missing or invalid bearer token.",
                            **{"WWW-Authenticate": {"schema": {"type": "string"}}},
                        ),
                        "403": _problem_response(
                            "forbidden: the token lacks {module}.{model}.read."
                        ),
                        "404": _problem_response("not-found: no such model in the path's module."),
                        "413": _problem_response("request-entity-too-large: the body is too big."),
                        "500": _problem_response("internal: an unexpected failure."),
                        "503": _problem_response("unavailable: the engine is unreachable."),
                        "504": _problem_response(
                            "gateway-timeout: the query exceeded its time budget."
                        ),
                    },
                }
            },
            OPENAPI_PATH: {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "headers": {
                "TraceId": {
                    "description": "The request's trace id (32 hex digits).",
                    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                }
            },
            "schemas": {
                "QueryRequest": _QUERY_REQUEST,
                "Metric": _METRIC,
                "QueryResponse": _QUERY_RESPONSE,
                "QueryMeta": _QUERY_META,
                "Problem": _PROBLEM,
            },
        },
    }
