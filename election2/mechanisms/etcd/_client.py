"""A thin trio-native etcd v3 client on etcd's JSON gateway (httpx).

Only what elections need: KV range/put/txn/delete, leases and a streaming
prefix watch. Several endpoints with failover: a request that cannot reach an
endpoint is retried on the next one, and the one that answered is used first
from then on. Optional TLS and etcd authentication (the token is fetched on
first use and again when etcd says it expired).

Facts of the gateway this relies on (etcd 3.4+): int64 values are JSON
strings, keys and values base64, default-valued fields are omitted (a lost
compare has no ``succeeded``; a keepalive of an unknown lease has no ``TTL``),
and ``/v3/watch`` streams one JSON object per line.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from ...errors import ConfigurationError, ElectionError, MechanismUnavailableError

__all__ = ["EtcdClient", "EtcdError", "KeyValue", "b64", "unb64"]

Json = dict[str, Any]


class EtcdError(ElectionError):
    """etcd answered with an error (not a transport failure)."""


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def unb64(data: str | None) -> str:
    return base64.b64decode(data or "").decode("utf-8", "replace")


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    raw[-1] += 1
    return b64(bytes(raw))


def range_request(prefix: str, **options: Any) -> Json:
    """A range request body for every key under ``prefix``."""
    return {"key": b64(prefix), "range_end": prefix_end(prefix), **options}


def kvs_of(response: Json) -> list[KeyValue]:
    """The key-values of a ``response_range`` inside a txn answer."""
    return [KeyValue.from_json(kv) for kv in response.get("response_range", {}).get("kvs", [])]


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def from_json(cls, kv: Json) -> KeyValue:
        return cls(
            key=unb64(kv.get("key")),
            value=unb64(kv.get("value")),
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
            lease=int(kv.get("lease", 0)),
        )


_AUTH_ERRORS = ("invalid auth token", "user name is empty", "token")


class EtcdClient:
    """Requests to one etcd cluster through any of ``endpoints`` (base URLs)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        name: str | None = None,
        timeout: float = 2.0,
        tls: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        #: How errors name the cluster (the factory's URL, passwords removed).
        self.name = _redact(name) if name else ",".join(self.endpoints)
        self.timeout = timeout
        self._current = 0
        self._username = username
        self._password = password
        self._token: str | None = None
        self._http = httpx.AsyncClient(
            verify=tls if tls is not None else True,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_keepalive_connections=8),
        )

    @property
    def endpoint(self) -> str:
        """The endpoint requests go to first."""
        return self.endpoints[self._current]

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._http.aclose()

    # -- transport -----------------------------------------------------------

    def _order(self) -> list[int]:
        count = len(self.endpoints)
        return [(self._current + i) % count for i in range(count)]

    async def _authenticate(self, base: str) -> None:
        answer = await self._http.post(
            f"{base}/v3/auth/authenticate",
            json={"name": self._username, "password": self._password or ""},
        )
        body = answer.json()
        if answer.status_code != 200 or "token" not in body:
            raise ConfigurationError(
                f"etcd {base}: authentication as {self._username!r} failed: {body}"
            )
        self._token = body["token"]

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def call(self, path: str, body: Json) -> Json:
        """POST ``body`` to ``path``, failing over between endpoints.

        Endpoints are tried in turn from :attr:`endpoint` (a lone one twice). An attempt gets at
        most ``timeout`` seconds and at most an equal share of the time left
        before the caller's deadline, so one hung member cannot use up a short
        budget (a renewal's) before the others are tried. The endpoint that
        answers becomes :attr:`endpoint`; one that fails, times out or is
        cancelled with the caller is demoted, so the next call starts at the
        next one. The caller's cancellation propagates.

        Raises :class:`MechanismUnavailableError` (naming every endpoint tried
        and why) when none answered, :class:`EtcdError` when etcd answered with
        an error.
        """
        failures = []
        # A lone endpoint gets a second try: the first may have hung on a pooled
        # connection that went silent, and a timed-out one is not reused.
        order = self._order() if len(self.endpoints) > 1 else [0, 0]
        for index, left in zip(order, range(len(order), 0, -1), strict=True):
            base = self.endpoints[index]
            timeout = self._attempt_timeout(left)
            answer: httpx.Response | str = f"no answer within {timeout:.3g} s"
            try:
                # httpx's timeouts are per phase and do not bound a member that
                # accepts the connection but never answers (SIGSTOPped).
                with trio.move_on_after(timeout):
                    answer = await self._attempt(base, path, body)
            except BaseException:
                # Cancelled by the caller, maybe while this endpoint hung.
                self._demote(index)
                raise
            if isinstance(answer, str):
                failures.append(f"{base} ({answer})")
                self._demote(index)
                continue
            self._current = index
            if answer.status_code != 200:
                raise EtcdError(
                    f"etcd {base}{path}: HTTP {answer.status_code}: {answer.text[:200]}"
                )
            result: Json = answer.json()
            return result
        raise MechanismUnavailableError(f"etcd {self.name} unreachable: {', '.join(failures)}")

    def _attempt_timeout(self, left: int) -> float:
        """``timeout``, capped at a fair share of the caller's remaining time
        among the ``left`` endpoints still to try (unused time carries over)."""
        remaining = trio.current_effective_deadline() - trio.current_time()
        return max(0.0, min(self.timeout, remaining / left))

    async def _attempt(self, base: str, path: str, body: Json) -> httpx.Response | str:
        """``base``'s answer, or why there is none."""
        try:
            if self._username and self._token is None:
                await self._authenticate(base)
            answer = await self._http.post(base + path, json=body, headers=self._headers())
            if answer.status_code != 200 and self._username and _is_auth_error(answer):
                await self._authenticate(base)  # the token expired: once more
                answer = await self._http.post(base + path, json=body, headers=self._headers())
        except (httpx.TransportError, OSError) as exc:
            return type(exc).__name__
        if answer.status_code == 503 or _unavailable(answer):
            return f"unavailable: {answer.text[:80]}"
        return answer

    def _demote(self, index: int) -> None:
        """Start the next call after ``index``, unless a concurrent call
        already moved away from it."""
        if self._current == index:
            self._current = (index + 1) % len(self.endpoints)

    # -- KV ----------------------------------------------------------------------

    async def range_prefix(self, prefix: str, **options: Any) -> tuple[list[KeyValue], int]:
        """Keys under ``prefix`` and the store revision of the answer."""
        answer = await self.call("/v3/kv/range", range_request(prefix, **options))
        kvs = [KeyValue.from_json(kv) for kv in answer.get("kvs", [])]
        return kvs, int(answer["header"]["revision"])

    async def get(self, key: str) -> KeyValue | None:
        answer = await self.call("/v3/kv/range", {"key": b64(key)})
        kvs = answer.get("kvs", [])
        return KeyValue.from_json(kvs[0]) if kvs else None

    async def txn(self, compare: list[Json], success: list[Json], failure: list[Json]) -> Json:
        return await self.call(
            "/v3/kv/txn", {"compare": compare, "success": success, "failure": failure}
        )

    async def delete(self, key: str) -> None:
        await self.call("/v3/kv/deleterange", {"key": b64(key)})

    # -- leases ------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: ``(id, granted ttl)``."""
        answer = await self.call("/v3/lease/grant", {"TTL": ttl})
        return int(answer["ID"]), int(answer["TTL"])

    async def lease_keep_alive(self, lease_id: int) -> int:
        """Refresh the lease; its remaining TTL, 0 if etcd no longer has it."""
        answer = await self.call("/v3/lease/keepalive", {"ID": lease_id})
        return int(answer.get("result", answer).get("TTL", 0))

    async def lease_keys(self, lease_id: int) -> frozenset[str] | None:
        """The keys attached to the lease, base64 as the gateway sends them;
        ``None`` if etcd no longer has the lease."""
        answer = await self.call("/v3/lease/timetolive", {"ID": lease_id, "keys": True})
        if int(answer.get("TTL", -1)) < 0:
            return None
        return frozenset(answer.get("keys", ()))

    async def lease_revoke(self, lease_id: int) -> None:
        try:
            await self.call("/v3/lease/revoke", {"ID": lease_id})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    # -- watch -------------------------------------------------------------------

    @asynccontextmanager
    async def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncIterator[AsyncIterator[Json]]:
        """Stream the watch responses for ``prefix`` from ``start_revision``.

        Yields the responses after the ``created`` one. Connection trouble ends
        the iteration with :class:`MechanismUnavailableError`; the caller
        re-syncs and watches again.
        """
        body = {
            "create_request": {
                "key": b64(prefix),
                "range_end": prefix_end(prefix),
                "start_revision": start_revision,
            }
        }
        base = self.endpoint
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            async with self._http.stream(
                "POST", f"{base}/v3/watch", json=body, headers=self._headers(), timeout=timeout
            ) as response:
                if response.status_code != 200:
                    raise MechanismUnavailableError(
                        f"etcd {base}: watch refused: HTTP {response.status_code}"
                    )
                yield _watch_results(response, base)
        except (httpx.TransportError, OSError) as exc:
            # Move on to the next endpoint for the following attempt.
            self._current = (self._current + 1) % len(self.endpoints)
            raise MechanismUnavailableError(f"etcd {base}: watch failed: {exc!r}") from exc


async def _watch_results(response: httpx.Response, base: str) -> AsyncIterator[Json]:
    async for line in response.aiter_lines():
        if not line.strip():
            continue
        message = json.loads(line)
        if "error" in message:
            raise MechanismUnavailableError(f"etcd {base}: watch error: {message['error']}")
        result: Json = message.get("result", {})
        if result.get("canceled"):
            raise MechanismUnavailableError(
                f"etcd {base}: watch cancelled: {result.get('cancel_reason', 'compacted?')}"
            )
        if result.get("created"):
            continue
        yield result
    raise MechanismUnavailableError(f"etcd {base}: watch stream ended")


def _redact(url: str) -> str:
    """The URL without the password of its user info."""
    scheme, sep, rest = url.partition("://")
    credentials, at, hosts = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{hosts}"


def _is_auth_error(answer: httpx.Response) -> bool:
    text = answer.text.lower()
    return any(marker in text for marker in _AUTH_ERRORS)


def _unavailable(answer: httpx.Response) -> bool:
    """A member without a leader, or stopping, answers but cannot serve."""
    if answer.status_code == 200:
        return False
    text = answer.text.lower()
    return "no leader" in text or "stopped" in text or "timed out" in text
