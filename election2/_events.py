"""What happens to terms and renewals, as events: the one place logs, metrics
and user code learn about it.

The shared core emits an :class:`ElectionEvent` for every transition and
renewal of every mechanism; :class:`EventLog` turns them into log records
(rate-limiting renewal trouble) and any number of listeners
(``factory.add_listener``) get them too: the Prometheus metrics of
:mod:`election2.metrics` are one such listener. Listeners are called inline,
so they must be quick and must not block; one that raises is logged and
otherwise ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import trio

__all__ = ["ElectionEvent", "EventKind", "EventLog", "Listener"]

EventKind = Literal[
    "campaign",  # a campaign started
    "withdrawn",  # a campaign ended without a term (cancelled or failed)
    "acquired",  # a term began
    "lost",  # a term ended without us asking: see ``reason``
    "resigned",  # a term ended by resign() or close()
    "renewed",  # a renewal confirmed the session (factory-wide)
    "renewal_failed",  # a renewal got no answer (factory-wide)
]


@dataclass(frozen=True)
class ElectionEvent:
    """One thing that happened. ``resource_id`` is None for factory-wide events."""

    kind: EventKind
    instance_id: str
    resource_id: str | None = None
    #: The term's fencing token (acquired, lost, resigned).
    token: int | None = None
    #: Why: lost (expired, deleted, refused, backend unreachable past the
    #: deadline), resigned (resigned, closed), withdrawn, renewal_failed.
    reason: str | None = None
    #: acquired: how long the campaign took; renewed and renewal_failed: how
    #: long the renewal took.
    seconds: float | None = None
    #: Time left to the local deadline: after a renewal, or when a term ended.
    headroom: float | None = None


Listener = Callable[[ElectionEvent], None]

log = logging.getLogger("election2")


class EventLog:
    """Log records for events, with renewal trouble rate-limited: the first
    failure, then a summary at most every ``summary_every`` seconds, and one
    line when renewals recover."""

    def __init__(self, summary_every: float = 10.0) -> None:
        self.summary_every = summary_every
        self._failures = 0
        self._failing_since = 0.0
        self._last_summary = 0.0

    def __call__(self, event: ElectionEvent) -> None:
        what = f"{event.instance_id}: {event.resource_id!r}" if event.resource_id else ""
        if event.kind == "acquired":
            log.info("%s acquired (token %s) after %.3f s", what, event.token, event.seconds or 0.0)
        elif event.kind == "lost":
            log.info(
                "%s lost (token %s): %s; %s", what, event.token, event.reason,
                _left(event.headroom),
            )  # fmt: skip
        elif event.kind == "resigned":
            log.info("%s %s (token %s)", what, event.reason or "resigned", event.token)
        elif event.kind == "campaign":
            log.debug("%s campaigning", what)
        elif event.kind == "withdrawn":
            log.debug("%s campaign withdrawn: %s", what, event.reason)
        elif event.kind == "renewed":
            self._renewed(event)
        elif event.kind == "renewal_failed":
            self._failed(event)

    def _renewed(self, event: ElectionEvent) -> None:
        if self._failures:
            log.warning(
                "%s: renewals recovered after %d failure(s) over %.1f s",
                event.instance_id, self._failures, trio.current_time() - self._failing_since,
            )  # fmt: skip
            self._failures = 0
        log.debug(
            "%s: renewed in %.3f s; %.3f s to the deadline",
            event.instance_id, event.seconds or 0.0, event.headroom or 0.0,
        )  # fmt: skip

    def _failed(self, event: ElectionEvent) -> None:
        now = trio.current_time()
        self._failures += 1
        if self._failures == 1:
            self._failing_since = self._last_summary = now
            log.warning(
                "%s: renewal failed, retrying: %s; %s",
                event.instance_id, event.reason, _left(event.headroom),
            )  # fmt: skip
        elif now - self._last_summary >= self.summary_every:
            self._last_summary = now
            log.warning(
                "%s: renewals still failing: %d failures over %.1f s, the last: %s; %s",
                event.instance_id, self._failures, now - self._failing_since, event.reason,
                _left(event.headroom),
            )  # fmt: skip


def _left(headroom: float | None) -> str:
    if headroom is None or headroom == float("-inf"):
        return "no term held"
    if headroom <= 0:
        return f"the local deadline passed {-headroom:.3f} s ago"
    return f"{headroom:.3f} s left to the local deadline"
