"""Prometheus metrics on the memory mechanism, and the HTTP endpoint that serves them.

The listener tests run under the mock clock; the HTTP tests need real sockets
and so the real clock.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from functools import partial

import httpx
import pytest
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

import election2._http
from election2 import ConfigurationError, Election
from election2.cli import main
from election2.mechanisms.memory import MemoryBackend
from election2.metrics import PrometheusMetrics, serve_metrics
from election2.ownership import ShardedOwnership

TTL = 10.0
virtual_time = pytest.mark.autojump_clock


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> PrometheusMetrics:
    return PrometheusMetrics(registry)


@virtual_time
async def test_is_master_and_transitions_follow_terms_per_instance(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    backend = MemoryBackend(ttl=TTL)
    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        metrics.attach(fa)
        metrics.attach(fb)
        ea, eb = await fa.new_election("job"), await fb.new_election("job")
        assert value(registry, "election2_transitions_total", instance_id="a", event="lost") == 0
        await ea.await_mastership()
        assert value(registry, "election2_is_master", instance_id="a", resource="job") == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(eb.await_mastership)
            await trio.sleep(2)
            # A waiting instance exports 0, not nothing.
            assert value(registry, "election2_is_master", instance_id="b", resource="job") == 0
            await ea.resign()
        assert value(registry, "election2_is_master", instance_id="a", resource="job") == 0
        assert value(registry, "election2_is_master", instance_id="b", resource="job") == 1
    for instance, acquired, resigned in (("a", 1, 1), ("b", 1, 1)):  # b resigned by close
        for event, count in (("acquired", acquired), ("resigned", resigned), ("lost", 0)):
            labels = {"instance_id": instance, "event": event}
            assert value(registry, "election2_transitions_total", **labels) == count
    assert value(registry, "election2_campaign_seconds_count", instance_id="a") == 1
    assert value(registry, "election2_campaign_seconds_sum", instance_id="b") == pytest.approx(2)
    assert value(registry, "election2_is_master", instance_id="b", resource="job") == 0


@virtual_time
async def test_renewals_are_timed_and_leave_headroom(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    backend = MemoryBackend(ttl=TTL)
    async with backend.open_factory("a") as fa:
        metrics.attach(fa)
        election = await fa.new_election("job")
        await election.await_mastership()
        await trio.sleep(TTL / 3 + 0.1)
        first = value(registry, "election2_renewal_seconds_count", instance_id="a")
        assert first is not None and first >= 1
        await trio.sleep(TTL)
        later = value(registry, "election2_renewal_seconds_count", instance_id="a")
        assert later is not None and later >= first + 2
        headroom = value(registry, "election2_deadline_headroom_seconds", instance_id="a")
        assert headroom is not None and TTL / 2 < headroom <= TTL
        assert value(registry, "election2_renewal_failures_total", instance_id="a") == 0


@virtual_time
async def test_partition_counts_failures_then_the_loss(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    backend = MemoryBackend(ttl=TTL)
    async with backend.open_factory("a") as fa:
        metrics.attach(fa)
        election = await fa.new_election("job")
        await election.await_mastership()
        backend.partition("a")
        await trio.sleep(TTL / 2)
        failures = value(registry, "election2_renewal_failures_total", instance_id="a")
        assert failures is not None and failures >= 1
        # Still master until the local deadline, with the headroom shrinking.
        assert value(registry, "election2_is_master", instance_id="a", resource="job") == 1
        headroom = value(registry, "election2_deadline_headroom_seconds", instance_id="a")
        assert headroom is not None and headroom < TTL * 2 / 3
        await trio.sleep(TTL)
        assert value(registry, "election2_is_master", instance_id="a", resource="job") == 0
        assert value(registry, "election2_transitions_total", instance_id="a", event="lost") == 1
        assert value(registry, "election2_deadline_headroom_seconds", instance_id="a") == 0
        backend.heal("a")


@virtual_time
async def test_crashed_master_is_counted_lost_and_the_successor_acquires(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    backend = MemoryBackend(ttl=TTL)
    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        metrics.attach(fa)
        metrics.attach(fb)
        ea, eb = await fa.new_election("job"), await fb.new_election("job")
        await ea.await_mastership()
        backend.crash("a")
        await eb.await_mastership()
        await trio.sleep(1)
        assert value(registry, "election2_is_master", instance_id="a", resource="job") == 0
        assert value(registry, "election2_is_master", instance_id="b", resource="job") == 1
        assert value(registry, "election2_transitions_total", instance_id="a", event="lost") == 1
        assert (
            value(registry, "election2_transitions_total", instance_id="b", event="acquired") == 1
        )
        backend.heal("a")


@virtual_time
async def test_attach_is_idempotent_and_detach_stops_counting(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    backend = MemoryBackend(ttl=TTL)
    async with backend.open_factory("a") as fa:
        metrics.attach(fa)
        metrics.attach(fa)
        election = await fa.new_election("job")
        await election.await_mastership()
        metrics.detach(fa)
        await election.resign()
    assert value(registry, "election2_transitions_total", instance_id="a", event="acquired") == 1
    assert value(registry, "election2_transitions_total", instance_id="a", event="resigned") == 0
    assert value(registry, "election2_is_master", instance_id="a", resource="job") == 1


@virtual_time
async def test_owned_resources_are_read_at_scrape_time(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    async def forever(election: Election) -> None:
        await trio.sleep_forever()

    backend = MemoryBackend(ttl=TTL)
    resources = ["r1", "r2", "r3"]
    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        a, b = ShardedOwnership(fa, resources, forever), ShardedOwnership(fb, resources, forever)
        metrics.track_ownership(a)
        metrics.track_ownership(b)
        assert value(registry, "election2_owned_resources", instance_id="a") == 0
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await trio.sleep(5)
            assert value(registry, "election2_owned_resources", instance_id="a") == 3
            await nursery.start(b.run)
            await trio.sleep(5)  # b joins: the share is balanced
            owned_a = value(registry, "election2_owned_resources", instance_id="a")
            owned_b = value(registry, "election2_owned_resources", instance_id="b")
            assert owned_a is not None and owned_b is not None
            assert owned_a + owned_b == 3 and max(owned_a, owned_b) == 2
            backend.crash("a")
            await trio.sleep(TTL + 2)
            assert value(registry, "election2_owned_resources", instance_id="a") == 0
            assert value(registry, "election2_owned_resources", instance_id="b") == 3
            nursery.cancel_scope.cancel()
        backend.heal("a")
    metrics.untrack_ownership(a)
    assert value(registry, "election2_owned_resources", instance_id="a") is None


def test_metrics_names_clash_on_one_registry(registry: CollectorRegistry) -> None:
    PrometheusMetrics(registry)
    with pytest.raises(ValueError, match="election2_"):
        PrometheusMetrics(registry)


# -- without the extra ----------------------------------------------------------------


def test_without_prometheus_client_the_import_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "election2.metrics")
    with pytest.raises(ConfigurationError, match=r"pip install 'election2\[prometheus\]'"):
        importlib.import_module("election2.metrics")


def test_without_prometheus_client_run_metrics_port_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "election2.metrics")
    status = main(["run", "--metrics-port", "0", "memory://no-extra", "job", "--", "true"])
    stderr = capsys.readouterr().err
    assert status == 2
    assert stderr.splitlines() == [
        "election2: election2.metrics needs prometheus-client: pip install 'election2[prometheus]'"
    ]


def test_election2_does_not_import_prometheus_client() -> None:
    code = (
        "import sys, election2, election2.cli, election2.ownership\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# -- HTTP (real clock) ------------------------------------------------------------------


async def test_serves_metrics_and_health(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    backend = MemoryBackend(ttl=1.0)
    async with backend.open_factory("a") as fa, trio.open_nursery() as nursery:
        metrics.attach(fa)
        port = await nursery.start(
            partial(serve_metrics, 0, registry=registry, health=fa.health, host="127.0.0.1")
        )
        election = await fa.new_election("job")
        await election.await_mastership()
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", trust_env=False
        ) as client:
            scraped = await client.get("/metrics")
            assert scraped.status_code == 200
            assert scraped.headers["content-type"] == CONTENT_TYPE_LATEST
            assert 'election2_is_master{instance_id="a",resource="job"} 1.0' in scraped.text
            assert "election2_renewal_seconds_bucket" in scraped.text
            healthy = await client.get("/healthz")
            assert healthy.status_code == 200
            assert healthy.json()["healthy"] is True and healthy.json()["masters"] == 1
            assert (await client.get("/metrics?name[]=x")).status_code == 200
            head = await client.head("/metrics")
            assert head.status_code == 200 and head.content == b""
            assert (await client.get("/nope")).status_code == 404
            assert (await client.post("/metrics", content=b"x")).status_code == 405

            backend.partition("a")
            with trio.fail_after(5):
                while (unhealthy := await client.get("/healthz")).status_code == 200:
                    await trio.sleep(0.05)
            assert unhealthy.status_code == 503
            assert "renewal(s) failed" in unhealthy.json()["reason"]
            backend.heal("a")
        nursery.cancel_scope.cancel()


async def test_metrics_only_without_health_source(registry: CollectorRegistry) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_metrics, 0, registry=registry, host="127.0.0.1"))
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 404
            scraped = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert scraped.status_code == 200
        nursery.cancel_scope.cancel()


async def raw_request(port: int, data: bytes) -> bytes:
    """Send ``data``, read the answer until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        if data:
            await stream.send_all(data)
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                answer += chunk
        return answer


async def test_malformed_oversized_and_silent_requests_are_answered_and_closed(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(election2._http, "REQUEST_TIMEOUT", 0.2)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_metrics, 0, registry=registry, host="127.0.0.1"))
        bad = await raw_request(port, b"hello\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400 ")
        huge = await raw_request(port, b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 20000)
        assert huge.startswith(b"HTTP/1.1 431 ")
        silent = await raw_request(port, b"GET /metrics HTTP/1.1\r\n")
        assert silent.startswith(b"HTTP/1.1 408 ")
        # Bare LF line ends and HTTP/1.0 are fine; the connection closes after the answer.
        plain = await raw_request(port, b"GET /metrics HTTP/1.0\n\n")
        assert plain.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in plain
        nursery.cancel_scope.cancel()


async def test_port_in_use_is_a_configuration_error() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        with pytest.raises(ConfigurationError, match=f"127.0.0.1:{port}"):
            await serve_metrics(port, host="127.0.0.1")
    finally:
        await listeners[0].aclose()
