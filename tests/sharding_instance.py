"""An instance of a sharded fleet: ``python -m tests.sharding_instance URL ID COUNT``.

Shares ``shard-0`` … ``shard-(COUNT-1)`` with the other instances and prints one
line per ownership event: ``<kind> <resource> <token> <time.monotonic()>``.
"""

from __future__ import annotations

import sys
import time

import trio

import election2
from election2 import Election
from election2.ownership import ShardedOwnership


async def serve(election: Election) -> None:
    await trio.sleep_forever()


async def main(url: str, instance_id: str, count: int) -> None:
    async with election2.open_factory(url, instance_id=instance_id) as factory:
        owner = ShardedOwnership(factory, [f"shard-{i}" for i in range(count)], serve)
        async with owner.events() as events, trio.open_nursery() as nursery:
            await nursery.start(owner.run)
            async for event in events:
                print(event.kind, event.resource_id, event.token, time.monotonic(), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
