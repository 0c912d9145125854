"""A sharded fleet of three processes on real Redis masters."""

from __future__ import annotations

import subprocess

from tests.redis.conftest import RedisNodeProcess, url_of
from tests.servers import require_binary
from tests.sharding_checks import fleet_balances_recovers_and_rests

TTL = 2.0
#: What campaigns and releases run (commandstats counts the commands inside
#: scripts too): the renewals' script only reads, extends and repairs keys and
#: keeps the member list (get, pexpire, zadd, ...).
CAMPAIGNING = {"cmdstat_set", "cmdstat_incr", "cmdstat_publish", "cmdstat_del", "cmdstat_unlink"}


def commands_beyond_renewals(nodes: list[RedisNodeProcess]) -> int:
    """Commands of campaigns and releases the nodes ran, in all."""
    total = 0
    for node in nodes:
        stats = subprocess.run(
            [require_binary("redis-cli"), "-p", str(node.port), "INFO", "commandstats"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
        for line in stats.splitlines():
            name, _, values = line.partition(":")
            if name in CAMPAIGNING:
                total += int(values.split("calls=")[1].split(",")[0])
    return total


def test_fleet_balances_rests_and_recovers_from_a_sigkill(
    own_redis3: list[RedisNodeProcess], prefix: str
) -> None:
    url = url_of(own_redis3, prefix, TTL)
    fleet_balances_recovers_and_rests(url, TTL, lambda: commands_beyond_renewals(own_redis3))
