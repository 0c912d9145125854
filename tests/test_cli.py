"""The ``election2`` command: demo, leader, run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from election2.cli import main


def test_demo_runs_in_virtual_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--virtual-time"]) == 0
    out = capsys.readouterr().out
    assert "handover alpha -> beta took 0.0 ms" in out
    assert "never two masters" in out
    assert "failover gamma -> alpha after 2.00s (TTL 2s)" in out
    assert "Fencing tokens strictly increased" in out
    # The sharded-ownership scene: balanced shares, a join, a crash.
    assert "delta joined" in out
    assert "beta crashed: its shards owned again after 2.00s (TTL 2s)" in out
    assert "No shard ever had two masters at once." in out
    for row in ("alpha           4", "gamma           4", "delta           4", "unowned         0"):
        assert row in out


def test_demo_as_module_exits_zero() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "election2", "demo", "--virtual-time", "--ttl", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "fencing token 4" in done.stdout


def test_leader_of_free_resource(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leader", "memory://cli-leader", "job"]) == 0
    assert capsys.readouterr().out.strip() == "(none)"


def test_run_passes_token_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    script = "import os, sys; print('token', os.environ['ELECTION2_FENCING_TOKEN']); sys.exit(7)"
    status = main(["run", "memory://cli-run", "job", "--", sys.executable, "-c", script])
    assert status == 7
    assert "master of 'job' (fencing token 1)" in capsys.readouterr().err


def test_bad_url_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leader", "gopher://x", "job"]) == 2
    assert "unknown election URL scheme 'gopher'" in capsys.readouterr().err


def test_bad_resource_id_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leader", "memory://cli-bad", "a/b"]) == 2
    assert "'a/b'" in capsys.readouterr().err


def test_help_shows_url_syntax_and_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["run", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
        out = capsys.readouterr().out
        assert "etcd://HOST:PORT" in out and "[::1]" in out
        assert "mastership lost" in out and "127" in out
