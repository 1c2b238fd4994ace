"""Installing the components: Debian packages when a binary is missing, Maven jars when needed.

Everything here is idempotent and fast when already installed: apt-get runs only when a binary
is missing, Maven only when the jar directory for the current ``deploy/kafka/pom.xml`` (named
by a hash of that file) is missing. Downloads are cached in the git-ignored ``.cache/`` folder
(``.cache/m2`` is Maven's local repository, ``.cache/jars/`` the installed class paths).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from local_stack._process import StackError, run_checked

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = PROJECT_ROOT / "deploy"
KAFKA_POM = DEPLOY_DIR / "kafka" / "pom.xml"
KAFKA_LOG4J2 = DEPLOY_DIR / "kafka" / "log4j2.properties"
CLICKHOUSE_CONFIG_DIR = DEPLOY_DIR / "clickhouse"
CONNECTOR_JSON = DEPLOY_DIR / "debezium" / "connector.json"

POSTGRES_MAJOR = 15
MIN_JAVA_MAJOR = 17

_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def cache_dir() -> Path:
    """The download cache: ``$LOCAL_STACK_CACHE_DIR`` or ``.cache/`` at the project root."""
    override = os.environ.get("LOCAL_STACK_CACHE_DIR")
    return Path(override).resolve() if override else PROJECT_ROOT / ".cache"


def postgres_bin_dir() -> Path:
    """Where PostgreSQL's server binaries are: ``$LOCAL_STACK_PG_BIN`` or Debian's path."""
    override = os.environ.get("LOCAL_STACK_PG_BIN")
    return Path(override) if override else Path(f"/usr/lib/postgresql/{POSTGRES_MAJOR}/bin")


def clickhouse_binary() -> Path:
    """The ClickHouse server binary (Debian's ``clickhouse-server``)."""
    override = os.environ.get("LOCAL_STACK_CLICKHOUSE_BIN")
    if override:
        return Path(override)
    found = shutil.which("clickhouse-server")
    return Path(found) if found else Path("/usr/sbin/clickhouse-server")


def redis_binary() -> Path:
    """The Redis server binary (Debian's ``redis-server``)."""
    override = os.environ.get("LOCAL_STACK_REDIS_BIN")
    if override:
        return Path(override)
    found = shutil.which("redis-server")
    return Path(found) if found else Path("/usr/bin/redis-server")


def java_binary() -> Path:
    """The java launcher: ``$JAVA_HOME/bin/java`` or the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return Path(java_home) / "bin" / "java"
    found = shutil.which("java")
    return Path(found) if found else Path("/usr/bin/java")


# --- Debian packages ---------------------------------------------------------------------------


def _is_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def _no_service_start() -> Iterator[None]:
    """Keep package scripts from starting system services (we run our own processes)."""
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\n# written by local_stack.install for one apt-get run\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def apt_install(packages: Iterable[str]) -> None:
    """Install Debian packages (``apt-get update`` once per cache, stamped in ``.cache``)."""
    names = sorted(set(packages))
    if not names:
        return
    if not _is_root():
        raise StackError(
            f"missing packages {' '.join(names)}: run `sudo apt-get install {' '.join(names)}`"
        )
    stamp = cache_dir() / ".apt-updated"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _no_service_start():
        if not stamp.exists():
            run_checked(["apt-get", "update", "-qq"], "apt-get update", env=env)
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.touch()
        run_checked(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *names],
            f"apt-get install {' '.join(names)}",
            env=env,
        )


def missing_debian_packages(components: Iterable[str]) -> list[str]:
    """The Debian packages to install for these components (empty when all binaries exist)."""
    wanted = set(components)
    packages: list[str] = []
    if "postgres" in wanted and not (postgres_bin_dir() / "postgres").exists():
        packages.append(f"postgresql-{POSTGRES_MAJOR}")
    if "clickhouse" in wanted and not clickhouse_binary().exists():
        packages.append("clickhouse-server")
    if "redis" in wanted and not redis_binary().exists():
        packages.append("redis-server")
    if wanted & {"kafka", "connect"}:
        if java_major() < MIN_JAVA_MAJOR:
            packages.append("openjdk-17-jre-headless")
        if shutil.which("mvn") is None:
            packages.append("maven")
    return packages


def java_major() -> int:
    """The major version of the java launcher (0 when there is none)."""
    java = java_binary()
    if not java.exists():
        return 0
    try:
        result = subprocess.run(  # noqa: S603 - fixed arguments
            [str(java), "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


# --- Maven: Kafka, Kafka Connect and the Debezium plugin --------------------------------------


@dataclass(frozen=True)
class KafkaInstall:
    """Installed jars: the broker/worker class path and the Connect plugin path."""

    root: Path
    kafka_version: str
    debezium_version: str

    @property
    def lib_dir(self) -> Path:
        """Jars of the broker and the Connect worker."""
        return self.root / "lib"

    @property
    def plugins_dir(self) -> Path:
        """The Connect worker's ``plugin.path`` (holds ``debezium-connector-postgres/``)."""
        return self.root / "plugins"

    @property
    def classpath(self) -> str:
        """The java class path (a wildcard over the lib directory)."""
        return f"{self.lib_dir}/*"

    def is_complete(self) -> bool:
        """Whether a previous install finished."""
        return (self.root / ".complete").exists()


def pom_versions(pom: Path = KAFKA_POM) -> dict[str, str]:
    """The ``<properties>`` of the pom (``kafka.version``, ``debezium.version``, ...)."""
    tree = ET.parse(pom)  # noqa: S314 - our own file
    props = tree.getroot().find("m:properties", _POM_NS)
    if props is None:
        return {}
    return {
        child.tag.split("}", 1)[-1]: (child.text or "").strip()
        for child in props
        if isinstance(child.tag, str)
    }


def kafka_install_path(pom: Path = KAFKA_POM) -> KafkaInstall:
    """Where the jars of this pom are (or will be) installed; no download."""
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    versions = pom_versions(pom)
    kafka_version = versions.get("kafka.version", "unknown")
    debezium_version = versions.get("debezium.version", "unknown")
    root = cache_dir() / "jars" / f"kafka-{kafka_version}-debezium-{debezium_version}-{digest}"
    return KafkaInstall(root, kafka_version, debezium_version)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install_kafka(pom: Path = KAFKA_POM) -> KafkaInstall:
    """Fetch Kafka, Kafka Connect and the Debezium plugin with Maven, unless already there."""
    target = kafka_install_path(pom)
    if target.is_complete():
        return target
    missing = missing_debian_packages(["kafka"])
    if missing:
        apt_install(missing)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) is required to fetch the Kafka jars")
    with _file_lock(cache_dir() / "jars" / ".install.lock"):
        if target.is_complete():
            return target
        staging = target.root.with_name(target.root.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        run_checked(
            [
                mvn,
                "-B",
                "-q",
                "--no-transfer-progress",
                "-Dstyle.color=never",
                "-f",
                str(pom),
                f"-Dmaven.repo.local={cache_dir() / 'm2'}",
                f"-DoutputDirectory={staging / 'lib'}",
                f"-Dplugins.dir={staging / 'plugins'}",
                "dependency:copy-dependencies",
                "dependency:unpack",
            ],
            "fetching Kafka and Debezium jars with Maven",
            timeout=1800,
        )
        if not (staging / "plugins" / "debezium-connector-postgres").is_dir():
            raise StackError(f"Maven did not unpack the Debezium plugin into {staging}/plugins")
        (staging / ".complete").write_text(
            f"kafka {target.kafka_version}\ndebezium {target.debezium_version}\n"
        )
        shutil.rmtree(target.root, ignore_errors=True)
        staging.rename(target.root)
        # Installs of older poms are dead weight (Maven's .cache/m2 keeps their jars anyway).
        for old in target.root.parent.glob("kafka-*"):
            if old != target.root and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return target


# --- everything ---------------------------------------------------------------------------------

ALL_COMPONENTS = ("postgres", "kafka", "connect", "clickhouse", "redis")


def install(components: Iterable[str] = ALL_COMPONENTS) -> KafkaInstall | None:
    """Install what these components need; returns the Kafka install when Kafka is among them."""
    wanted = list(components)
    unknown = set(wanted) - set(ALL_COMPONENTS)
    if unknown:
        raise StackError(f"unknown components: {', '.join(sorted(unknown))}")
    missing = missing_debian_packages(wanted)
    if missing:
        apt_install(missing)
    if set(wanted) & {"kafka", "connect"}:
        return install_kafka()
    return None


def component_versions() -> dict[str, str]:
    """Versions of the installed components, for ``status`` and the report."""
    versions: dict[str, str] = {}
    pom = pom_versions()
    versions["kafka"] = pom.get("kafka.version", "?")
    versions["debezium"] = pom.get("debezium.version", "?")
    with contextlib.suppress(StackError):
        out = run_checked([str(postgres_bin_dir() / "postgres"), "--version"], "postgres")
        match = re.search(r"\(PostgreSQL\) (\S+)", out)
        versions["postgres"] = match.group(1) if match else out.strip()
    with contextlib.suppress(StackError):
        out = run_checked([str(redis_binary()), "--version"], "redis-server")
        match = re.search(r"v=(\S+)", out)
        versions["redis"] = match.group(1) if match else out.strip()
    with contextlib.suppress(StackError):
        out = run_checked(["dpkg-query", "-W", "-f=${Version}", "clickhouse-server"], "dpkg")
        versions["clickhouse"] = out.strip()
    versions["java"] = str(java_major())
    return versions
