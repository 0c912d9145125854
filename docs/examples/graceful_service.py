"""A service that resigns cleanly on SIGTERM and SIGINT.

    python graceful_service.py URL RESOURCE INSTANCE

systemd, docker and Kubernetes stop a service with SIGTERM. Turned into a trio
cancellation, it stops the guarded work and leaves ``open_factory``, which
resigns every election: a successor starts at once instead of a TTL later.
"""

import signal
import sys
import time

import trio

import election2


async def work(election: election2.Election) -> None:
    while True:
        await election.await_mastership()
        async with election.with_mastership():
            while True:  # the guarded work; cancelled the moment mastership ends
                print("working", election.fencing_token, time.monotonic(), flush=True)
                await trio.sleep(0.05)


async def main(url: str, resource_id: str, instance_id: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with election2.open_factory(url, instance_id=instance_id) as factory:
            election = await factory.new_election(resource_id)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(work, election)
                async for signum in signals:
                    print("stopping on", signal.Signals(signum).name, flush=True)
                    nursery.cancel_scope.cancel()  # the work stops here...
                    break
        # ...and leaving open_factory resigned: the successor is already starting.


if __name__ == "__main__":
    url, resource_id, instance_id = sys.argv[1:4]
    trio.run(main, url, resource_id, instance_id)
