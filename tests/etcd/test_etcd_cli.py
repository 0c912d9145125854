"""``election2`` against a real etcd, in child processes: signals, a stopped
server, exit statuses, IPv6, a read-only ``leader``."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

import pytest
import trio

from election2.mechanisms.etcd._client import EtcdClient
from tests.cli_processes import (
    alive,
    election2,
    guarded,
    stop,
    supervisor,
    ticks,
    wait_for_ticks,
)
from tests.etcd.conftest import EtcdMember, store_revision
from tests.faultproxy import proxies
from tests.servers import wait_until

log = logging.getLogger("tests.cli")
TTL = 3.0


def url_of(endpoint: str, prefix: str) -> str:
    return f"etcd://{endpoint}/{prefix}?ttl={TTL:g}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_stop_signal_hands_over_at_once_without_overlap(
    etcd_server: EtcdMember, prefix: str, tmp_path: Path, signum: int
) -> None:
    url, log_path = url_of(etcd_server.endpoint, prefix), tmp_path / "ticks"
    grandchild = tmp_path / "grandchild"
    with supervisor(
        "run",
        "--instance-id",
        "a",
        url,
        "job",
        "--",
        *guarded(log_path, "--grandchild", str(grandchild)),
    ) as a:
        wait_for_ticks(log_path, "a")
        with supervisor("run", url, "job", "--instance-id", "b", "--", *guarded(log_path)) as b:
            time.sleep(0.5)  # b waits behind a
            assert not ticks(log_path, "b")
            signalled = stop(a, signum)
            assert a.wait(10) == 128 + signum
            b_started = wait_for_ticks(log_path, "b", timeout=TTL)
            assert b.poll() is None
    a_ticks, b_ticks = ticks(log_path, "a"), ticks(log_path, "b")
    handover = b_started - signalled
    log.info(
        "%s: successor's command started %.3f s after the signal (ttl %g s); "
        "a's last step %.3f s before b's first",
        signal.Signals(signum).name, handover, TTL, b_started - a_ticks[-1][2],
    )  # fmt: skip
    assert a_ticks[-1][2] < b_started  # never side by side
    assert handover < TTL / 2  # a resigned: no lease expiry waited for
    assert b_ticks[0][1] > a_ticks[0][1]  # a later fencing token
    assert not alive(int(grandchild.read_text()))  # the whole group is gone


def test_command_ignoring_sigterm_is_killed_before_the_server_could_expire(
    own_etcd: EtcdMember, prefix: str, tmp_path: Path
) -> None:
    url, log_path = url_of(own_etcd.endpoint, prefix), tmp_path / "ticks"
    with supervisor(
        "run", "--kill-after", "1", url, "job", "--", *guarded(log_path, "--ignore-term")
    ) as a:
        wait_until(lambda: bool(ticks(log_path)), timeout=20, what="the command")
        instance = ticks(log_path)[0][0]
        time.sleep(0.5)
        stopped_at = time.monotonic()
        own_etcd.pause()
        try:
            time.sleep(TTL + 1)  # past any expiry the server could have
            last = ticks(log_path, instance)[-1][2]
        finally:
            own_etcd.resume()
        status = a.wait(30)  # closing waits for the server, bounded by close_timeout
        stderr = a.communicate()[1]
    margin = stopped_at + TTL - last
    log.info(
        "etcd stopped: the command (ignoring SIGTERM) stopped %.3f s before the earliest "
        "possible server expiry",
        margin,
    )
    assert status == 3
    assert "SIGTERM" in stderr and "lapses" in stderr
    assert margin > 0


def test_reported_loss_kills_the_command_at_once(
    etcd_server: EtcdMember, prefix: str, tmp_path: Path
) -> None:
    url, log_path = url_of(etcd_server.endpoint, prefix), tmp_path / "ticks"
    with supervisor("run", "--instance-id", "a", url, "job", "--", *guarded(log_path)) as a:
        wait_for_ticks(log_path, "a")

        async def delete_candidacy() -> float:
            client = EtcdClient([f"http://{etcd_server.endpoint}"])
            try:
                kvs, _ = await client.range_prefix(f"{prefix}/job/")
                deleted_at = time.monotonic()
                await client.delete(kvs[0].key)
                return deleted_at
            finally:
                await client.aclose()

        deleted_at = trio.run(delete_candidacy)
        assert a.wait(TTL * 2) == 3
    took = ticks(log_path, "a")[-1][2] - deleted_at
    log.info("loss reported: the command's last step %.3f s after the deletion", took)
    assert took < TTL / 3 + 0.5  # the watch (or at worst the next renewal) told it


def test_exit_statuses(etcd_server: EtcdMember, prefix: str, tmp_path: Path) -> None:
    url = url_of(etcd_server.endpoint, prefix)
    assert election2("run", url, "job", "--", sys.executable, "-c", "exit(7)").returncode == 7
    killed = election2("run", url, "job", "--", "sh", "-c", "kill -9 $$")
    assert killed.returncode == 128 + signal.SIGKILL
    missing = election2("run", url, "job", "--", "no-such-command-xyz")
    assert missing.returncode == 127 and "no-such-command-xyz" in missing.stderr
    usage = election2("run", url, "job", "true")
    assert usage.returncode == 2 and "--" in usage.stderr
    bad = election2("run", "--kill-after", "2", url, "job", "--", "true")
    assert bad.returncode == 2 and "--kill-after" in bad.stderr
    down = election2("run", "etcd://127.0.0.1:1/p?timeout=0.2", "job", "--", "true")
    assert down.returncode == 5 and "127.0.0.1:1" in down.stderr
    with supervisor("run", "--instance-id", "holder", url, "job", "--", "sleep", "30"):
        wait_until(
            lambda: election2("leader", url, "job").stdout.strip() == "holder",
            timeout=20, what="the holder",
        )  # fmt: skip
        waited = election2("run", url, "job", "--timeout", "1", "--", "true")
        assert waited.returncode == 4 and "--timeout" in waited.stderr
    for result in (killed, missing, usage, bad, down, waited):
        assert "Traceback" not in result.stderr
        assert all(line.startswith("election2: ") for line in result.stderr.splitlines())


def test_ipv6_loopback_url(etcd_server: EtcdMember, prefix: str) -> None:
    async def through_ipv6() -> tuple[str, int]:
        async with proxies([etcd_server.endpoint], host="::1") as (proxy,):
            url = url_of(proxy.endpoint, prefix)
            assert url.startswith("etcd://[::1]:")
            done = await trio.to_thread.run_sync(
                lambda: election2("run", url, "job", "--", "sh", "-c", "exit 3")
            )
            return done.stderr, done.returncode

    stderr, status = trio.run(through_ipv6)
    assert status == 3, stderr


def test_leader_writes_nothing(etcd_server: EtcdMember, prefix: str) -> None:
    before = store_revision(etcd_server, prefix)
    done = election2("leader", url_of(etcd_server.endpoint, prefix), "job")
    assert done.returncode == 0 and done.stdout.strip() == "(none)"
    assert store_revision(etcd_server, prefix) == before
