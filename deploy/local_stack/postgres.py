"""PostgreSQL 15 (Debian's binaries): an own cluster, logical decoding on, loopback only."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from local_stack._process import ManagedProcess, StackError, free_port, run_checked
from local_stack.component import Component
from local_stack.install import postgres_bin_dir

POSTGRES_OS_USER = "postgres"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")

# Settings every start passes on the command line (the cluster's files stay stock).
BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "wal_level": "logical",
    "max_wal_senders": "16",
    "max_replication_slots": "16",
    "max_connections": "200",
    "timezone": "UTC",
    "log_timezone": "UTC",
    # A test cluster: durability is not needed, speed is.
    "fsync": "off",
    # On, as in production: with it off a commit returns before its WAL is written, and logical
    # decoding only sends written WAL, so every change waited for the WAL writer (up to
    # wal_writer_delay, 200 ms) before Debezium saw it. With fsync off the write is cheap.
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _check_identifier(value: str, what: str) -> str:
    if not _IDENTIFIER.match(value):
        raise StackError(f"{what} must match {_IDENTIFIER.pattern}: {value!r}")
    return value


class PostgresServer(Component):
    """One PostgreSQL cluster (``initdb``) in ``directory``, ready for Debezium.

    ``wal_level=logical``, 16 WAL senders and replication slots, listening on 127.0.0.1 only
    (no Unix socket), password (SCRAM) authentication. The application role (``user``) has
    LOGIN and REPLICATION and owns ``database``; the superuser is ``postgres``. As root the
    server runs as the ``postgres`` system user, which owns the data directory.
    """

    name = "postgres"
    default_timeout = 60.0

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        user: str = "analytics",
        password: str = "analytics",  # noqa: S107 - a local test cluster
        database: str = "analytics",
        superuser_password: str = "postgres",  # noqa: S107 - a local test cluster
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Describe the cluster; nothing is created before ``start()``."""
        super().__init__(directory)
        self.port = port or free_port()
        self.user = _check_identifier(user, "user")
        self.password = password
        self.database = _check_identifier(database, "database")
        self.superuser = "postgres"
        self.superuser_password = superuser_password
        self.settings = {**BASE_SETTINGS, **(settings or {})}
        self._os_user = POSTGRES_OS_USER if os.geteuid() == 0 else None

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (may be a symlink, see ``_make_data_dir``)."""
        return self.directory / "data"

    @property
    def dsn(self) -> str:
        """libpq/asyncpg DSN of the application role and database."""
        return self.dsn_for(self.database)

    @property
    def superuser_dsn(self) -> str:
        """DSN of the superuser on the ``postgres`` database."""
        return (
            f"postgresql://{self.superuser}:{self.superuser_password}"
            f"@{self.host}:{self.port}/postgres"
        )

    def dsn_for(self, database: str) -> str:
        """DSN of the application role on another database."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def addresses(self) -> dict[str, str]:
        """The DSNs and host:port."""
        return {
            "dsn": self.dsn,
            "superuser_dsn": self.superuser_dsn,
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "password": self.password,
            "database": self.database,
        }

    def cmdline_marker(self) -> str:
        """The real data directory (``-D`` argument; it may live outside ``directory``)."""
        return str(self.data_dir.resolve())

    # --- lifecycle ---------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        path = postgres_bin_dir() / name
        if not path.exists():
            raise StackError(f"{path} not found: run `python -m local_stack install`")
        return str(path)

    def _make_data_dir(self) -> None:
        """Create the data directory owned by the server's OS user.

        When a parent directory cannot be entered by that user (pytest's 0700 temp dirs), the
        data lives in a private directory under the system temp dir instead, and
        ``directory/data`` is a symlink to it.
        """
        if self.data_dir.exists() or self.data_dir.is_symlink():
            return
        if self._os_user is None or _traversable_by(self.directory, self._os_user):
            self.data_dir.mkdir(mode=0o700)
            target = self.data_dir
        else:
            target = Path(tempfile.mkdtemp(prefix="local-stack-pgdata-"))
            self.data_dir.symlink_to(target)
        if self._os_user is not None:
            entry = pwd.getpwnam(self._os_user)
            os.chown(target, entry.pw_uid, entry.pw_gid)
        target.chmod(0o700)

    def _initdb(self) -> None:
        self._make_data_dir()
        with tempfile.NamedTemporaryFile("w", prefix="pwfile-", delete=False) as handle:
            handle.write(self.superuser_password + "\n")
            pwfile = Path(handle.name)
        try:
            if self._os_user is not None:
                entry = pwd.getpwnam(self._os_user)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            run_checked(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir.resolve()),
                    "-U",
                    self.superuser,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                "initdb",
                user=self._os_user,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
                cwd=Path("/"),
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _prepare(self) -> ManagedProcess:
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        args = [self._bin("postgres"), "-D", str(self.data_dir.resolve())]
        settings = {**self.settings, "port": str(self.port)}
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        return ManagedProcess(
            self.name,
            args,
            self.log_path,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"},
            cwd=Path("/"),
            user=self._os_user,
            # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients (Debezium).
            stop_signal=signal.SIGINT,
        )

    def _ready(self) -> bool:
        result = subprocess.run(  # noqa: S603 - fixed arguments
            [self._bin("pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0

    def _after_ready(self) -> None:
        # Identifiers were checked against _IDENTIFIER, the password is quoted as a literal.
        user, database = self.user, self.database
        self.execute(
            f"""
            DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN
                CREATE ROLE {user} LOGIN REPLICATION PASSWORD {_quote_literal(self.password)};
              END IF;
            END $$;
            SELECT 'CREATE DATABASE {database} OWNER {user}'
            WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{database}')\\gexec
            """  # noqa: S608
        )

    # --- helpers -----------------------------------------------------------------------------

    def execute(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser with ``psql`` (stops at the first error); returns stdout."""
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
            handle.write(sql)
            script = Path(handle.name)
        try:
            return run_checked(
                [
                    self._bin("psql"),
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-U",
                    self.superuser,
                    "-d",
                    database,
                    "-f",
                    str(script),
                ],
                "psql",
                env={
                    **os.environ,
                    "PGPASSWORD": self.superuser_password,
                    "PGCONNECT_TIMEOUT": "10",
                },
            )
        finally:
            script.unlink(missing_ok=True)

    def create_database(self, name: str) -> str:
        """Create a database owned by the application role; returns its DSN."""
        _check_identifier(name, "database")
        self.execute(f"CREATE DATABASE {name} OWNER {self.user}")
        return self.dsn_for(name)

    def remove(self) -> None:
        """Stop the server and delete its directory (and the data behind a symlink)."""
        self.stop()
        if self.data_dir.is_symlink():
            shutil.rmtree(self.data_dir.resolve(), ignore_errors=True)
        shutil.rmtree(self.directory, ignore_errors=True)


def _traversable_by(path: Path, user: str) -> bool:
    """Whether ``user`` may enter every directory from / down to ``path``."""
    entry = pwd.getpwnam(user)
    groups = {entry.pw_gid, *(g for g in os.getgrouplist(user, entry.pw_gid))}
    for directory in [path, *path.parents]:
        info = directory.stat()
        mode = info.st_mode
        if info.st_uid == entry.pw_uid:
            allowed = bool(mode & stat.S_IXUSR)
        elif info.st_gid in groups:
            allowed = bool(mode & stat.S_IXGRP)
        else:
            allowed = bool(mode & stat.S_IXOTH)
        if not allowed:
            return False
    return True
