"""``python -m local_stack install|up|down|status|env|connector``.

``up`` starts a fresh stack in ``.data/stack`` (or ``--dir`` / ``$LOCAL_STACK_DIR``), prints
the addresses and writes ``state.json`` there; the servers keep running after the command
exits. ``down`` stops what ``state.json`` lists. ``status`` tells what runs. ``env`` prints
``export`` lines for a shell. ``connector`` registers ``deploy/debezium/connector.json`` with
the running Connect worker.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from local_stack._process import StackError
from local_stack.connector import load_connector_config
from local_stack.install import ALL_COMPONENTS, CONNECTOR_JSON, component_versions, install
from local_stack.kafka import ConnectClient
from local_stack.stack import (
    STATE_FILE,
    LocalStack,
    default_directory,
    environment,
    probe,
    read_state,
    running_components,
    stop_from_state,
)


def _components(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _print(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _remove_stack_directory(directory: Path) -> None:
    """Delete a stack directory, refusing anything that does not look like one."""
    if not directory.exists():
        return
    allowed = {*ALL_COMPONENTS, STATE_FILE}
    strangers = sorted(p.name for p in directory.iterdir() if p.name not in allowed)
    if strangers:
        raise StackError(
            f"{directory} holds more than a stack ({', '.join(strangers[:5])}); not deleting it"
        )
    shutil.rmtree(directory)


def cmd_install(args: argparse.Namespace) -> int:
    """Install the components (idempotent)."""
    started = time.monotonic()
    jars = install(args.components)
    versions = component_versions()
    _print("installed: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    if jars is not None:
        _print(f"jars: {jars.root}")
    _print(f"in {time.monotonic() - started:.1f} s")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Start a fresh stack and record it in state.json."""
    directory: Path = args.dir
    state_path = directory / STATE_FILE
    if state_path.exists():
        alive = running_components(read_state(state_path))
        if alive:
            _print(f"already running ({', '.join(alive)}); run `down` first")
            return 1
    _remove_stack_directory(directory)
    started = time.monotonic()
    stack = LocalStack(directory, args.components, timeout=args.timeout)
    stack.start()
    path = stack.write_state(state_path)
    _print(f"local stack up in {time.monotonic() - started:.1f} s ({directory})")
    for name, addresses in stack.addresses().items():
        shown = {k: v for k, v in addresses.items() if k != "password"}
        _print(f"  {name:<10} " + "  ".join(f"{k}={v}" for k, v in shown.items()))
    _print(f"state: {path}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop what state.json lists."""
    state_path = args.dir / STATE_FILE
    if state_path.exists():
        stopped = stop_from_state(read_state(state_path))
        state_path.unlink()
        _print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    else:
        _print(f"nothing to stop ({state_path} does not exist)")
    if args.purge:
        _remove_stack_directory(args.dir)
        _print(f"removed {args.dir}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Tell which recorded components run and answer."""
    state_path = args.dir / STATE_FILE
    if not state_path.exists():
        _print(f"not running ({state_path} does not exist)")
        return 3
    state = read_state(state_path)
    if args.json:
        _print(json.dumps(state, indent=2))
    alive = running_components(state)
    healthy = True
    for name, entry in state.get("components", {}).items():
        pid = alive.get(name)
        answering = pid is not None and probe(name, entry)
        healthy = healthy and answering
        status = "up" if answering else ("starting/unresponsive" if pid else "down")
        _print(f"  {name:<10} {status:<8} pid={pid or '-'}  log={entry.get('log')}")
    return 0 if healthy else 1


def cmd_env(args: argparse.Namespace) -> int:
    """Print export lines for the running stack."""
    state = read_state(args.dir / STATE_FILE)
    for key, value in environment(state).items():
        _print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_connector(args: argparse.Namespace) -> int:
    """Register the Debezium connector with the running worker."""
    state = read_state(args.dir / STATE_FILE)
    url = state["components"]["connect"]["addresses"]["url"]
    config = load_connector_config(args.file)
    client = ConnectClient(url)
    status = client.register(config.name, config.config, args.timeout)
    _print(json.dumps(status, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m local_stack", description=__doc__)
    parser.add_argument(
        "--dir",
        type=Path,
        default=default_directory(),
        help="stack directory (default: $LOCAL_STACK_DIR or .data/stack)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    components_help = f"comma-separated subset of {','.join(ALL_COMPONENTS)}"

    p_install = sub.add_parser("install", help="install the components (idempotent)")
    p_install.add_argument(
        "--components", type=_components, default=list(ALL_COMPONENTS), help=components_help
    )
    p_install.set_defaults(func=cmd_install)

    p_up = sub.add_parser("up", help="start a fresh stack, write state.json")
    p_up.add_argument(
        "--components", type=_components, default=list(ALL_COMPONENTS), help=components_help
    )
    p_up.add_argument("--timeout", type=float, default=None, help="readiness timeout per server")
    p_up.set_defaults(func=cmd_up)

    p_down = sub.add_parser("down", help="stop what state.json lists")
    p_down.add_argument("--purge", action="store_true", help="also delete the stack directory")
    p_down.set_defaults(func=cmd_down)

    p_status = sub.add_parser("status", help="which components run (exit 0 when all answer)")
    p_status.add_argument("--json", action="store_true", help="also print state.json")
    p_status.set_defaults(func=cmd_status)

    p_env = sub.add_parser("env", help="print export lines for the running stack")
    p_env.set_defaults(func=cmd_env)

    p_conn = sub.add_parser("connector", help="register deploy/debezium/connector.json")
    p_conn.add_argument("--file", type=Path, default=CONNECTOR_JSON)
    p_conn.add_argument("--timeout", type=float, default=120.0)
    p_conn.set_defaults(func=cmd_connector)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors are printed without a traceback."""
    args = build_parser().parse_args(argv)
    args.dir = args.dir.resolve()
    try:
        code: int = args.func(args)
    except StackError as exc:
        sys.stderr.write(f"local_stack: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
