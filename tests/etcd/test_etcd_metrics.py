"""``election2 run --metrics-port`` against a real etcd, in child processes:
what Prometheus and a health probe see of a master, a waiting instance and a
hand-over."""

from __future__ import annotations

import json
import logging
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.cli_processes import election2, supervisor
from tests.etcd.conftest import EtcdMember
from tests.servers import free_port, wait_until

log = logging.getLogger("tests.metrics")
TTL = 3.0
# Straight to 127.0.0.1, whatever proxy the environment names.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def url_of(endpoint: str, prefix: str) -> str:
    return f"etcd://{endpoint}/{prefix}?ttl={TTL:g}"


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of ``GET path``; (0, "") while nothing answers."""
    try:
        with OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def sample(port: int, name: str, **labels: str) -> float | None:
    """The value of the series ``name{labels...}`` scraped from ``port``."""
    status, text = get(port, "/metrics")
    if status != 200:
        return None
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return None


def is_master(port: int, instance: str) -> float | None:
    return sample(port, "election2_is_master", instance_id=instance, resource="job")


def test_master_and_waiting_instance_export_mastership_and_hand_over(
    etcd_server: EtcdMember, prefix: str, tmp_path: Path
) -> None:
    url, port_a, port_b = url_of(etcd_server.endpoint, prefix), free_port(), free_port()
    command = ["--", "sleep", "60"]
    with supervisor(
        "run", "--instance-id", "a", "--metrics-port", str(port_a), url, "job", *command
    ) as a:  # fmt: skip
        wait_until(lambda: is_master(port_a, "a") == 1, timeout=20, what="a to export master")
        assert sample(port_a, "election2_transitions_total", event="acquired") == 1
        assert sample(port_a, "election2_transitions_total", event="lost") == 0
        status, body = get(port_a, "/healthz")
        assert status == 200 and json.loads(body)["healthy"] is True
        assert json.loads(body)["masters"] == 1
        with supervisor(
            "run", "--instance-id", "b", url, "job", "--metrics-port", str(port_b), *command
        ) as b:  # fmt: skip
            wait_until(lambda: is_master(port_b, "b") == 0, timeout=20, what="b to export 0")
            assert sample(port_b, "election2_transitions_total", event="acquired") == 0
            a.send_signal(signal.SIGTERM)  # a resigns once its command is gone
            assert a.wait(10) == 128 + signal.SIGTERM
            wait_until(lambda: is_master(port_b, "b") == 1, timeout=TTL, what="b to export 1")
            assert sample(port_b, "election2_transitions_total", event="acquired") == 1
            wait_until(
                lambda: (sample(port_b, "election2_renewal_seconds_count") or 0) >= 1,
                timeout=TTL, what="a renewal of b",
            )  # fmt: skip
            scraped = get(port_b, "/metrics")[1]
            assert b.poll() is None
    assert get(port_a, "/metrics")[0] == 0  # nothing left listening
    shown = [line for line in scraped.splitlines() if line.startswith("election2_")]
    log.info("b's /metrics after the hand-over:\n%s", "\n".join(shown))


def test_metrics_port_in_use_exits_2_with_one_line(etcd_server: EtcdMember, prefix: str) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = election2(
            "run", "--metrics-port", str(port), url_of(etcd_server.endpoint, prefix), "job",
            "--", "true",
        )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("election2: ")
    assert f":{port}" in lines[0] and "in use" in lines[0]
