"""The ``analytics`` command: serve, demo, token, query.

The gRPC server, chDB and the demo generator are imported by the commands that use them, not
with this module: every command builds this parser (the replication commands too), and a
restarted ``analytics worker`` must be writing again within two seconds of its start.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc
import structlog
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from service.api import convert
from service.auth import mint_token
from service.backends.base import AnalyticsBackend
from service.backends.selection import open_backend
from service.backfill_jobs import BackfillLauncherFactory
from service.catalog import Catalog, CatalogError, load_catalog
from service.errors import AnalyticsError
from service.log_config import configure_logging
from service.settings import Settings
from service.tenants import TenantRecord

log = structlog.get_logger(__name__)
DEMO_PERMISSIONS = ("*.*.read",)


BackgroundTask = Callable[[Catalog, AnalyticsBackend, asyncio.Event], Coroutine[Any, Any, None]]
ServeWorker = Callable[[Settings], BackgroundTask | None]
"""Given the settings, what ``serve`` runs beside the server (the CDC worker), if anything."""
AddCommands = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
ServeBackfills = Callable[[Settings], BackfillLauncherFactory]
"""Given the settings, how ``serve`` makes the launcher behind SyncService.StartBackfill."""


def main(
    argv: Sequence[str] | None = None,
    *,
    serve_worker: ServeWorker | None = None,
    add_commands: AddCommands | None = None,
    backfills: ServeBackfills | None = None,
) -> int:
    """Run one ``analytics`` command.

    The replication package extends the command (``worker``, and the CDC worker inside
    ``serve``) through ``serve_worker`` and ``add_commands``, and gives ``serve`` its backfill
    engine through ``backfills``: the service never imports it.
    """
    parser = _parser(add_commands)
    parser.set_defaults(serve_worker=serve_worker, serve_backfills=backfills)
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        key: value
        for key, value in (
            ("port", getattr(args, "port", None)),
            ("host", getattr(args, "host", None)),
            ("data_dir", getattr(args, "data_dir", None)),
            ("catalog_path", getattr(args, "catalog", None)),
        )
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValueError as exc:
        print(f"analytics: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        return int(args.handler(settings, args))
    except CatalogError as exc:
        print(f"analytics: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser(add_commands: AddCommands | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analytics", description="Tenant-safe analytics over ClickHouse replicas, over gRPC."
    )
    commands = parser.add_subparsers(required=True, metavar="command")

    serve_cmd = commands.add_parser(
        "serve", help="run the gRPC server (embedded engine by default)"
    )
    _server_options(serve_cmd)
    serve_cmd.set_defaults(handler=_serve)

    demo = commands.add_parser(
        "demo", help="build the demo dataset in the embedded engine (idempotent), then serve it"
    )
    _server_options(demo)
    demo.add_argument("--rows", type=int, default=1_200_000, help="current rows across models")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the dataset")
    demo.add_argument("--force", action="store_true", help="rebuild even if already loaded")
    demo.add_argument("--no-serve", action="store_true", help="load the data and exit")
    demo.set_defaults(handler=_demo)

    token = commands.add_parser("token", help="mint a development JWT")
    token.add_argument("--tenant", required=True, help="tenant the token is for")
    token.add_argument(
        "--permission",
        action="append",
        default=None,
        help="permission such as crm.deals.read (repeatable; default *.*.read)",
    )
    token.add_argument("--subject", default="developer", help="token subject")
    token.add_argument("--ttl-hours", type=float, default=12.0, help="lifetime in hours")
    token.set_defaults(handler=_token)

    tenants = commands.add_parser(
        "tenants", help="provision, deprovision, list or reconcile tenants (users, row policies)"
    )
    tenants.add_argument("action", choices=["provision", "deprovision", "list", "reconcile"])
    tenants.add_argument("tenant_id", nargs="?", default=None, help="for provision/deprovision")
    tenants.add_argument("--force", action="store_true", help="reconcile: re-apply every tenant")
    tenants.add_argument("--data-dir", type=Path, default=None, help="embedded engine data")
    tenants.add_argument("--catalog", type=Path, default=None, help="model catalog file")
    tenants.set_defaults(handler=_tenants)

    rollups = commands.add_parser(
        "rollups", help="build the catalog's rollups (stale partitions) or report their status"
    )
    rollups.add_argument("action", choices=["build", "status"])
    rollups.add_argument("names", nargs="*", help="build: only these rollups (default: all)")
    rollups.add_argument("--data-dir", type=Path, default=None, help="embedded engine data")
    rollups.add_argument("--catalog", type=Path, default=None, help="model catalog file")
    rollups.set_defaults(handler=_rollups)

    query = commands.add_parser("query", help="send a request (DESIGN.md JSON) to a server")
    query.add_argument("request", help="the request as JSON, or @file.json")
    query.add_argument("--target", default=None, help="host:port (default: the settings')")
    query.add_argument("--token", default=None, help="bearer token (default: mint one)")
    query.add_argument("--tenant", default="acme", help="tenant of the minted token")
    query.add_argument("--stream", action="store_true", help="use StreamQuery, print JSON lines")
    query.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
    query.set_defaults(handler=_query)
    if add_commands is not None:
        add_commands(commands)
    return parser


def _server_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    command.add_argument("--port", type=int, default=None, help="gRPC port (default 50051)")
    command.add_argument("--data-dir", type=Path, default=None, help="embedded engine data")
    command.add_argument("--catalog", type=Path, default=None, help="model catalog file")


_YOUNG_COLLECTION_THRESHOLD = 50_000


def freeze_startup_heap() -> None:
    """Keep startup objects out of the collector's walks; collect young objects less often.

    What is alive at start (modules, classes, settings) is frozen. For a process that stays up:
    its loops allocate per request and per event, so collections run often, and each full one
    walked every startup object again (the CDC worker: 5-10 % of its CPU per event,
    bench/README.md). Not for libraries or tests: what is frozen is never collected.

    The youngest generation is also collected after 50 000 net allocations instead of 700: the
    CDC worker's fetches and batches hold thousands of short-lived tracked objects (records, row
    keys), which refcounting frees: with 700, 300 000 events cost about 1 350 collections that
    found about 1 100 objects in all, 5-10 % of the worker's time (bench/README.md, "Ingestion,
    sixth round").
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_COLLECTION_THRESHOLD, middle, oldest)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from service.api.server import serve  # noqa: PLC0415 (see the module docstring)

    worker = args.serve_worker(settings) if args.serve_worker else None
    backfills = args.serve_backfills(settings) if args.serve_backfills else None
    freeze_startup_heap()
    asyncio.run(serve(settings, worker=worker, backfills=backfills))
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    if settings.clickhouse_url:
        print(
            "analytics demo loads the embedded engine: unset ANALYTICS_CLICKHOUSE_URL",
            file=sys.stderr,
        )
        return 2

    # Imported here, not with the module: see the module docstring.
    from service.api.server import serve  # noqa: PLC0415
    from service.backends.embedded import EmbeddedBackend  # noqa: PLC0415
    from service.demo.generator import generate_dataset  # noqa: PLC0415
    from service.demo.loader import ensure_demo_loaded, load_dataset  # noqa: PLC0415

    async def build_and_serve() -> None:
        catalog = load_catalog(settings.catalog_path)
        backend = EmbeddedBackend(settings.data_dir, pool_size=settings.engine_pool_size)
        if args.force:
            log.info("generating demo dataset", rows=args.rows, seed=args.seed)
            dataset = generate_dataset(catalog, seed=args.seed, rows=args.rows)
            await load_dataset(backend, catalog, dataset, _progress)
        elif await ensure_demo_loaded(
            backend, catalog, seed=args.seed, rows=args.rows, progress=_progress
        ):
            log.info("demo dataset loaded", rows=args.rows, seed=args.seed)
        else:
            log.info("demo dataset already loaded", rows=args.rows, seed=args.seed)
        token = mint_token(
            settings,
            subject="demo",
            tenant="acme",
            permissions=DEMO_PERMISSIONS,
            ttl=dt.timedelta(days=7),
        )
        print(f"\ndemo token for tenant acme (valid 7 days):\n{token}\n", file=sys.stderr)
        if args.no_serve:
            await backend.close()
            return
        await serve(settings, catalog=catalog, backend=backend)

    asyncio.run(build_and_serve())
    return 0


def _progress(model: str, done: int, total: int) -> None:
    percent = 100 * done / total if total else 100
    bar = "#" * int(percent // 4)
    print(f"\r  {model:<18} [{bar:<25}] {done:>9,}/{total:,} rows", end="", file=sys.stderr)
    if done >= total:
        print(file=sys.stderr)


def _tenants(settings: Settings, args: argparse.Namespace) -> int:
    if args.action in ("provision", "deprovision") and not args.tenant_id:
        print(f"analytics tenants {args.action}: a tenant id is required", file=sys.stderr)
        return 2

    from service.api.server import tenant_provisioner  # noqa: PLC0415 (see the module docstring)

    async def run() -> dict[str, Any]:
        catalog = load_catalog(settings.catalog_path)
        backend = open_backend(settings)
        try:
            provisioner = tenant_provisioner(settings, catalog, backend)
            if args.action == "provision":
                result = await provisioner.provision(args.tenant_id)
                return {"tenant": _tenant_json(result.record), "created": result.created}
            if args.action == "deprovision":
                return {"existed": await provisioner.deprovision(args.tenant_id) is not None}
            if args.action == "reconcile":
                reapplied = await provisioner.reconcile(force=args.force)
                return {"reapplied": [record.tenant_id for record in reapplied]}
            listed: list[dict[str, Any]] = []
            after = ""
            while True:
                page = await provisioner.list_tenants(limit=1000, after=after)
                listed += [_tenant_json(record) for record in page.tenants]
                if page.next_after is None:
                    break
                after = page.next_after
            return {
                "tenants": listed,
                "engineEnforcesRowPolicies": provisioner.enforces_row_policies,
                "engineDetail": provisioner.engine_detail,
            }
        finally:
            await backend.close()

    try:
        print(json.dumps(asyncio.run(run()), indent=2, ensure_ascii=False))
    except AnalyticsError as error:
        print(json.dumps({"error": error.reason, "message": error.message}), file=sys.stderr)
        return 1
    return 0


def _rollups(settings: Settings, args: argparse.Namespace) -> int:
    from service.rollups.keeper import RollupKeeper  # noqa: PLC0415 (see the module docstring)

    async def run() -> dict[str, Any]:
        catalog = load_catalog(settings.catalog_path)
        known = {rollup.name for model in catalog.models.values() for rollup in model.rollups}
        unknown = sorted(set(args.names) - known)
        if unknown:
            raise CatalogError(f"no rollup {', '.join(unknown)} in the catalog")
        backend = open_backend(settings)
        try:
            keeper = RollupKeeper(catalog, backend)
            await keeper.prepare()
            built: dict[str, int] = {}
            if args.action == "build" and keeper.enabled:
                built = await keeper.build(args.names, _partition_progress)
            return {
                "enabled": keeper.enabled,
                **({"partitionsBuilt": built} if args.action == "build" else {}),
                "rollups": [
                    {
                        "name": status.name,
                        "model": status.model,
                        "table": status.table,
                        "partitions": status.partitions,
                        "current": status.current,
                        "rows": status.rows,
                    }
                    for status in await keeper.status()
                ],
            }
        finally:
            await backend.close()

    try:
        print(json.dumps(asyncio.run(run()), indent=2))
    except AnalyticsError as error:
        print(json.dumps({"error": error.reason, "message": error.message}), file=sys.stderr)
        return 1
    return 0


def _partition_progress(rollup: str, done: int, total: int) -> None:
    bar = "#" * (25 * done // total if total else 25)
    print(f"\r  {rollup:<24} [{bar:<25}] {done}/{total} partitions", end="", file=sys.stderr)
    if done >= total:
        print(file=sys.stderr)


def _tenant_json(record: TenantRecord) -> dict[str, Any]:
    return {
        "tenantId": record.tenant_id,
        "userName": record.user_name,
        "rowPoliciesEnforced": record.row_policies_enforced,
        "tables": list(record.tables),
        "createdAt": record.created_at.isoformat(),
        "updatedAt": record.updated_at.isoformat(),
    }


def _token(settings: Settings, args: argparse.Namespace) -> int:
    print(
        mint_token(
            settings,
            subject=args.subject,
            tenant=args.tenant,
            permissions=args.permission or DEMO_PERMISSIONS,
            ttl=dt.timedelta(hours=args.ttl_hours),
        )
    )
    return 0


def _query(settings: Settings, args: argparse.Namespace) -> int:
    text = Path(args.request[1:]).read_text() if args.request.startswith("@") else args.request
    target = args.target or f"{settings.host}:{settings.port}"
    token = args.token or mint_token(
        settings, subject="cli", tenant=args.tenant, permissions=DEMO_PERMISSIONS
    )
    metadata = (("authorization", f"Bearer {token}"),)
    try:
        with grpc.insecure_channel(target) as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            if args.stream:
                stream_request = json_format.Parse(text, analytics_pb2.StreamQueryRequest())
                for message in stub.StreamQuery(
                    stream_request, metadata=metadata, timeout=args.timeout
                ):
                    if message.HasField("chunk"):
                        for row in convert.chunk_rows(message.chunk):
                            print(json.dumps(row, ensure_ascii=False))
                    else:
                        meta = analytics_pb2.QueryResponse(meta=message.meta)
                        print(json.dumps({"meta": convert.response_json(meta)["meta"]}))
            else:
                request = json_format.Parse(text, analytics_pb2.QueryRequest())
                response = stub.Query(request, metadata=metadata, timeout=args.timeout)
                print(json.dumps(convert.response_json(response), indent=2, ensure_ascii=False))
    except json_format.ParseError as exc:
        print(json.dumps({"error": "INVALID_ARGUMENT", "message": str(exc)}), file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(json.dumps(_error_json(exc), indent=2), file=sys.stderr)
        return 1
    return 0


def _error_json(error: grpc.RpcError) -> dict[str, Any]:
    if not isinstance(error, grpc.Call):
        return {"code": "UNKNOWN", "message": str(error)}
    body: dict[str, Any] = {"code": error.code().name, "message": error.details()}
    status = rpc_status.from_call(error)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                body["reason"] = info.reason
                body["metadata"] = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                body["fieldViolations"] = [
                    {"field": v.field, "description": v.description} for v in bad.field_violations
                ]
    return body


if __name__ == "__main__":
    sys.exit(main())
