"""One candidate process of the campaign.

``python -m chaos.candidate URL INSTANCE_ID RESOURCES STORE_PORT HISTORY SEED``

Campaigns for every resource of the comma-separated ``RESOURCES`` on one
factory. While master of one it records a term and runs guarded operations
back to back: 10-30 ms of "work", then a write of the term's token through the
fenced store (a refused write ends the operation as ``"fenced"`` and the term
with a resign), then a 5-20 ms pause. Every record goes to ``HISTORY`` (JSON
lines, appended). SIGTERM ends it cleanly: terms end, the factory closes.
"""

from __future__ import annotations

import logging
import random
import signal
import sys

import trio

import election2
from election2 import ElectionError, Factory
from election2.testing import HistoryRecorder

from .store import StoreClient

log = logging.getLogger("chaos.candidate")


async def work_on(
    factory: Factory, resource: str, recorder: HistoryRecorder, store_port: int, seed: str
) -> None:
    rng = random.Random(seed)
    store = StoreClient(store_port, recorder.instance_id)
    election = await factory.new_election(resource)
    while True:
        try:
            await election.await_mastership()
        except ElectionError as exc:
            log.warning("%s: await_mastership: %r", resource, exc)
            await trio.sleep(0.5)
            continue
        fenced = False
        async with election.with_mastership() as scope:
            with recorder.term(election, scope) as term:
                token = term.token
                while token is not None and not fenced:
                    try:
                        with term.operation() as operation:
                            await trio.sleep(rng.uniform(0.010, 0.030))
                            if not await store.write(resource, token):
                                operation.fenced()
                                fenced = True
                            # A reply read after a pause past the deadline comes with no
                            # checkpoint (trio hands a task its I/O before a cancellation
                            # due at the same time): this one makes such an operation end
                            # "cancelled", not "ok" after its deadline.
                            await trio.lowlevel.checkpoint()
                    except (OSError, trio.BrokenResourceError) as exc:  # recorded as "error"
                        log.warning("%s: the store failed: %r", resource, exc)
                    await trio.sleep(rng.uniform(0.005, 0.020))
        if fenced:
            log.warning("%s: token %s refused by the store: resigning", resource, token)
            try:
                await election.resign()
            except ElectionError as exc:
                log.warning("%s: resign: %r", resource, exc)


async def main(
    url: str, instance_id: str, resources: list[str], store_port: int, history: str, seed: str
) -> None:
    with HistoryRecorder(instance_id, history) as recorder:
        async with election2.open_factory(url, instance_id=instance_id) as factory:
            async with trio.open_nursery() as nursery:
                for resource in resources:
                    nursery.start_soon(
                        work_on, factory, resource, recorder, store_port, f"{seed}-{resource}"
                    )
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING, format="%(created).3f %(name)s %(levelname)s %(message)s"
    )
    url, instance_id, resources, port, history, seed = sys.argv[1:7]
    trio.run(main, url, instance_id, resources.split(","), int(port), history, seed)
