"""Sessions: tests, lint, typecheck, docs (the default set) and bench."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

SOURCES = ["election2", "tests", "docs/examples", "chaos"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, against real etcd and redis-server processes."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", *SOURCES, "bench", "noxfile.py")
    session.run("ruff", "format", "--check", *SOURCES, "bench", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", *SOURCES)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs with warnings as errors."""
    session.install("-e", ".[dev]", "sphinx", "myst-parser")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def chaos(session: nox.Session) -> None:
    """The fault campaign, 60 s per backend: ``nox -s chaos -- [SEED ...]`` (default seed 1)."""
    session.install("-e", ".[dev]")
    for seed in session.posargs or ["1"]:
        session.run("python", "-m", "chaos", "--seed", seed, "--duration", "60")


# Peer libraries measured beside election2 by bench/bench_peers.py: installed in
# the bench session only, never a dependency of the library.
BENCH_PEERS = [
    "kazoo",
    "tooz",
    "etcd3gw",
    "pottery",
    "python-redis-lock",
    "redis",
    "hiredis",
    "coredis",
]
# ZooKeeper for kazoo and tooz's zookeeper driver: Debian's server package (the
# jar and its classpath; zookeeperd only adds the system service, which the
# benchmark does not use: it starts its own server on a free loopback port).
ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
ZOOKEEPER_APT = "zookeeper"


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against references and peer libraries, measured in the same run."""
    session.install("-e", ".[dev]", *BENCH_PEERS)
    _install_zookeeper(session)
    scripts = [
        "bench/bench_etcd.py",
        "bench/bench_redis.py",
        "bench/bench_resp.py",
        "bench/bench_peers.py",
    ]
    for script in sorted(session.posargs or scripts):
        session.run("python", script)


def _install_zookeeper(session: nox.Session) -> None:
    """Debian's ZooKeeper server package, with apt-get when missing (as root)."""
    if os.path.exists(ZOOKEEPER_JAR) and shutil.which("java"):
        return
    install = f"apt-get install -y {ZOOKEEPER_APT}"
    if os.geteuid() != 0:
        session.warn(f"ZooKeeper missing and not root: not measured (install: {install})")
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run_install("apt-get", "update", "-qq", external=True, env=env)
    session.run_install("apt-get", "install", "-y", "-qq", ZOOKEEPER_APT, external=True, env=env)
