"""Sessions: tests, lint, typecheck, docs (the default set) and bench."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

SOURCES = ["election2", "tests", "docs/examples"]


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
def bench(session: nox.Session) -> None:
    """Benchmarks against references measured in the same run (redis-py, coredis and
    pottery only here)."""
    session.install("-e", ".[dev]", "redis", "hiredis", "coredis", "pottery")
    scripts = ["bench/bench_etcd.py", "bench/bench_redis.py", "bench/bench_resp.py"]
    for script in sorted(session.posargs or scripts):
        session.run("python", script)
