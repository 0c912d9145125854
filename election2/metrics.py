"""Prometheus metrics of elections, and a trio HTTP endpoint to scrape them.

Needs the ``prometheus`` extra (``pip install 'election2[prometheus]'``)::

    metrics = PrometheusMetrics()          # on prometheus_client's default REGISTRY
    metrics.attach(factory)                # a listener on the factory's events
    metrics.track_ownership(owner)         # a ShardedOwnership's share, read at scrape time
    port = await nursery.start(partial(serve_metrics, 9464, health=factory.health))

The metrics (every one labelled ``instance_id``):

``election2_is_master{instance_id, resource}``
    1 from a term's start to its end (lost or resigned), else 0; 0 from the
    moment a campaign starts, so a waiting instance exports 0 too.
``election2_transitions_total{instance_id, event}``
    terms ``acquired``, ``lost`` (ended without us asking) and ``resigned``
    (resign or close).
``election2_campaign_seconds{instance_id}``
    histogram of how long won campaigns took (waiting behind a master included).
``election2_renewal_seconds{instance_id}``
    histogram of how long successful renewals took.
``election2_renewal_failures_total{instance_id}``
    renewals that got no answer (each retry counts).
``election2_deadline_headroom_seconds{instance_id}``
    time left to the local deadline after the last renewal attempt, successful
    or not: right after a healthy renewal about the TTL (less the drift
    margin); one whose renewals fail shows it shrink towards 0.
``election2_owned_resources{instance_id}``
    how many resources a tracked :class:`~election2.ownership.ShardedOwnership`
    owns now.

The label is ``instance_id``, the factory's instance id, and not ``instance``:
Prometheus attaches ``instance`` (the scraped target's host:port) to every
series itself and would rename ours to ``exported_instance``. The label keeps
several factories in one process apart; two factories with the *same* instance
id share their series.

One :class:`PrometheusMetrics` per registry (a second one's names would clash);
attach it to as many factories as you like. Series stay after :meth:`detach` or
the end of an election, with their last values.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ._election import BaseFactory, Health
from ._events import ElectionEvent
from ._http import Response, Route, serve_http
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .ownership import ShardedOwnership

try:
    import prometheus_client
except ImportError:  # pragma: no cover - exercised in a test with the module hidden
    raise ConfigurationError(
        "election2.metrics needs prometheus-client: pip install 'election2[prometheus]'"
    ) from None

__all__ = ["PrometheusMetrics", "serve_metrics"]

#: Campaigns may wait behind a master for hours: buckets from 10 ms to an hour.
CAMPAIGN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
TRANSITIONS = ("acquired", "lost", "resigned")


class PrometheusMetrics:
    """The election2 metrics, registered on ``registry`` (default: the
    process-wide ``prometheus_client.REGISTRY``)."""

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        self.registry = prometheus_client.REGISTRY if registry is None else registry
        self.is_master = prometheus_client.Gauge(
            "election2_is_master",
            "1 while this instance is master of the resource, else 0",
            ["instance_id", "resource"],
            registry=self.registry,
        )
        self.transitions = prometheus_client.Counter(
            "election2_transitions",
            "Terms acquired, lost (ended without asking) and resigned",
            ["instance_id", "event"],
            registry=self.registry,
        )
        self.campaign_seconds = prometheus_client.Histogram(
            "election2_campaign_seconds",
            "How long won campaigns took",
            ["instance_id"],
            buckets=CAMPAIGN_BUCKETS,
            registry=self.registry,
        )
        self.renewal_seconds = prometheus_client.Histogram(
            "election2_renewal_seconds",
            "How long successful renewals took",
            ["instance_id"],
            registry=self.registry,
        )
        self.renewal_failures = prometheus_client.Counter(
            "election2_renewal_failures",
            "Renewals that got no answer",
            ["instance_id"],
            registry=self.registry,
        )
        self.headroom = prometheus_client.Gauge(
            "election2_deadline_headroom_seconds",
            "Time left to the local deadline after the last renewal attempt",
            ["instance_id"],
            registry=self.registry,
        )
        self.owned_resources = prometheus_client.Gauge(
            "election2_owned_resources",
            "Resources a sharded ownership owns now",
            ["instance_id"],
            registry=self.registry,
        )

    def attach(self, factory: BaseFactory[Any]) -> None:
        """Count ``factory``'s events from now on. Idempotent."""
        instance_id = factory.instance_id
        # Zero series from the start, so rate() and alerts see the first event.
        for event in TRANSITIONS:
            self.transitions.labels(instance_id, event)
        self.renewal_failures.labels(instance_id)
        self.campaign_seconds.labels(instance_id)
        self.renewal_seconds.labels(instance_id)
        factory.remove_listener(self._on_event)  # attached twice would count twice
        factory.add_listener(self._on_event)

    def detach(self, factory: BaseFactory[Any]) -> None:
        """Stop counting ``factory``'s events; its series keep their values."""
        factory.remove_listener(self._on_event)

    def track_ownership(self, owner: ShardedOwnership) -> None:
        """Export ``len(owner.owned)`` as ``election2_owned_resources``, read at
        each scrape; one owner per instance id."""
        # The instance id of the owner's factory (ShardedOwnership keeps it private).
        instance_id = owner.instance_id
        self.owned_resources.labels(instance_id).set_function(lambda: len(owner.owned))

    def untrack_ownership(self, owner: ShardedOwnership) -> None:
        """Remove the ``election2_owned_resources`` series of ``owner``."""
        instance_id = owner.instance_id
        with contextlib.suppress(KeyError):  # not tracked
            self.owned_resources.remove(instance_id)

    def _on_event(self, event: ElectionEvent) -> None:
        # A listener: called inline by the core, so only quick updates here.
        instance_id, kind = event.instance_id, event.kind
        if event.resource_id is not None:
            if kind == "acquired":
                self.is_master.labels(instance_id, event.resource_id).set(1)
            elif kind in ("campaign", "withdrawn", "lost", "resigned"):
                self.is_master.labels(instance_id, event.resource_id).set(0)
        if kind in TRANSITIONS:
            self.transitions.labels(instance_id, kind).inc()
        if kind == "acquired" and event.seconds is not None:
            self.campaign_seconds.labels(instance_id).observe(event.seconds)
        elif kind == "renewed" and event.seconds is not None:
            self.renewal_seconds.labels(instance_id).observe(event.seconds)
        elif kind == "renewal_failed":
            self.renewal_failures.labels(instance_id).inc()
        if kind in ("renewed", "renewal_failed") and event.headroom is not None:
            self.headroom.labels(instance_id).set(max(event.headroom, 0.0))


async def serve_metrics(
    port: int,
    *,
    registry: prometheus_client.CollectorRegistry | None = None,
    health: Callable[[], Health] | None = None,
    host: str = "0.0.0.0",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` (``registry``'s metrics in Prometheus' text
    format; default: the process-wide ``REGISTRY``) and, given ``health``
    (e.g. ``factory.health``), ``GET /healthz``: 200 with a JSON body when
    healthy, else 503 with the reason. Runs until cancelled: start it in a
    nursery, ``port = await nursery.start(...)`` (``port`` 0 binds a free one).

    Binds every IPv4 interface by default (``host="0.0.0.0"``): Prometheus
    scrapes from other hosts. Pass ``host="127.0.0.1"`` to keep it local, or
    ``"::"`` for IPv6. A port in use raises :class:`ConfigurationError`.
    """
    source = prometheus_client.REGISTRY if registry is None else registry

    def metrics() -> Response:
        return 200, prometheus_client.CONTENT_TYPE_LATEST, prometheus_client.generate_latest(source)

    routes: dict[str, Route] = {"/metrics": metrics}
    if health is not None:
        check = health

        def healthz() -> Response:
            state = check()
            body = {
                "healthy": state.healthy,
                "reason": state.reason,
                "masters": state.masters,
                "headroom": None if state.headroom is None else round(state.headroom, 3),
            }
            return (
                200 if state.healthy else 503,
                "application/json",
                json.dumps(body).encode() + b"\n",
            )

        routes["/healthz"] = healthz
    await serve_http(port, routes, host=host, task_status=task_status)
