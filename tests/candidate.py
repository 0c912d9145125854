"""A master process for the fault tests: ``python -m tests.candidate URL RESOURCE ID``.

Campaigns, then does "guarded work" while master, printing one line per step:
``MASTER <token> <t>``, ``WORK <token> <t>``, ``LOST <token> <t>`` where ``t``
is ``time.monotonic()`` (one clock for every process on the machine).
"""

from __future__ import annotations

import sys
import time

import trio

import election2


def say(*words: object) -> None:
    print(*words, time.monotonic(), flush=True)


async def main(url: str, resource_id: str, instance_id: str) -> None:
    async with election2.open_factory(url, instance_id=instance_id) as factory:
        election = await factory.new_election(resource_id)
        while True:
            await election.await_mastership()
            token = election.fencing_token
            say("MASTER", token)
            async with election.with_mastership() as scope:
                while True:
                    say("WORK", token)
                    await trio.sleep(0.05)
            if scope.cancelled_caught:
                say("LOST", token)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
