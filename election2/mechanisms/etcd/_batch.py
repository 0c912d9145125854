"""Group commit for compare-free etcd operations.

Campaigns that start together (an instance taking 10,000 resources at boot)
each need a put and a read. Sent one by one that is 20,000 round trips; the
:class:`TxnBatcher` instead sends whatever operations are waiting as ONE
compare-free transaction (up to ``max_ops``), so the round trips grow with the
number of *rounds*, not of resources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import trio

from ._client import EtcdClient

__all__ = ["TxnBatcher"]

Json = dict[str, Any]


@dataclass
class _Submission:
    ops: list[Json]
    done: trio.Event = field(default_factory=trio.Event)
    responses: list[Json] = field(default_factory=list)
    revision: int = 0
    error: BaseException | None = None


class TxnBatcher:
    """Coalesces operations submitted while a transaction is in flight."""

    def __init__(self, client: EtcdClient, *, max_ops: int = 128) -> None:
        self._client = client
        self._max_ops = max_ops
        self._send, self._receive = trio.open_memory_channel[_Submission](math.inf)

    async def submit(self, ops: list[Json]) -> tuple[list[Json], int]:
        """Run ``ops`` (``request_put`` / ``request_range`` / ...) in a shared
        transaction; returns their responses and the transaction's revision.

        The wait is shielded (it is bounded by the client's request timeout):
        a caller cancelled after its put was sent must still learn the key it
        created, so that it can delete it again.
        """
        submission = _Submission(ops)
        self._send.send_nowait(submission)
        with trio.CancelScope(shield=True):
            await submission.done.wait()
        if submission.error is not None:
            raise submission.error
        return submission.responses, submission.revision

    async def run(self) -> None:
        """Send batches until cancelled (a task in the factory's nursery).

        A batch never exceeds ``max_ops``: a submission that does not fit
        waits for the next one (etcd refuses a larger transaction whole).
        """
        held_over: _Submission | None = None
        while True:
            first = held_over if held_over is not None else await self._receive.receive()
            held_over = None
            batch = [first]
            count = len(first.ops)
            while count < self._max_ops:
                try:
                    submission = self._receive.receive_nowait()
                except trio.WouldBlock:
                    break
                if count + len(submission.ops) > self._max_ops:
                    held_over = submission
                    break
                batch.append(submission)
                count += len(submission.ops)
            await self._send_batch(batch)

    async def _send_batch(self, batch: list[_Submission]) -> None:
        try:
            answer = await self._client.txn([], [op for s in batch for op in s.ops], [])
        except Exception as exc:  # every submitter gets the error
            for submission in batch:
                submission.error = exc
                submission.done.set()
            return
        responses = answer.get("responses", [])
        revision = int(answer["header"]["revision"])
        position = 0
        for submission in batch:
            submission.responses = responses[position : position + len(submission.ops)]
            submission.revision = revision
            position += len(submission.ops)
            submission.done.set()
