"""The shared core: input checks, the mastership bookkeeping, the registry."""

from __future__ import annotations

import math

import pytest
import trio

import election2
from election2 import ConfigurationError, Election, Factory, InvalidResourceIdError
from election2._checks import check_resource_id, drift_margin
from election2._mastership import Mastership
from election2.mechanisms import parse_url, register
from election2.mechanisms.memory import MemoryBackend
from election2.testing import FaultyElection

pytestmark = pytest.mark.autojump_clock


@pytest.mark.parametrize("resource_id", ["a", "tree-42", "ünïcode", "x" * 256, "with space"])
def test_good_resource_ids(resource_id: str) -> None:
    assert check_resource_id(resource_id) == resource_id


@pytest.mark.parametrize(
    ("resource_id", "fragment"),
    [
        ("", "''"),
        ("a/b", "'a/b'"),
        ("line\nbreak", r"'line\\nbreak'"),
        ("\x85next", r"'\\x85next'"),
        ("y" * 257, "257 characters"),
        (3, "int"),
        (None, "NoneType"),
    ],
)
def test_bad_resource_ids_name_the_value(resource_id: object, fragment: str) -> None:
    with pytest.raises(InvalidResourceIdError, match=fragment) as caught:
        check_resource_id(resource_id)
    assert isinstance(caught.value, ValueError)


def test_drift_margin_is_redlocks() -> None:
    assert drift_margin(10.0) == pytest.approx(0.102)


async def test_scope_when_not_held_is_cancelled() -> None:
    mastership = Mastership()
    with mastership.scope() as scope:
        await trio.sleep(1)
    assert scope.cancelled_caught


async def test_extend_moves_deadlines_forward_only() -> None:
    mastership = Mastership()
    mastership.begin(token=1, deadline=trio.current_time() + 5)
    with mastership.scope() as scope:
        mastership.extend(trio.current_time() + 8)
        assert scope.deadline == pytest.approx(trio.current_time() + 8)
        mastership.extend(trio.current_time() + 2)
        assert scope.deadline == pytest.approx(trio.current_time() + 8)
        await trio.sleep(7)
        assert mastership.held and not scope.cancel_called
    assert not scope.cancelled_caught


async def test_expired_scope_stays_cancelled_after_late_extension() -> None:
    mastership = Mastership()
    mastership.begin(token=1, deadline=trio.current_time() + 1)
    with mastership.scope() as scope:
        await trio.sleep(2)
    assert scope.cancelled_caught
    assert not mastership.held and mastership.granted
    mastership.extend(trio.current_time() + 10)
    assert mastership.held
    assert scope.deadline <= trio.current_time()


async def test_end_cancels_all_scopes_and_forgets_token() -> None:
    mastership = Mastership()
    mastership.begin(token=7, deadline=math.inf)
    with mastership.scope() as first, mastership.scope() as second:
        mastership.end()
        assert first.cancel_called and second.cancel_called
    assert mastership.token is None and mastership.deadline == -math.inf


async def test_memory_and_faulty_elections_satisfy_the_protocols() -> None:
    async with MemoryBackend().open_factory("a") as factory:
        assert isinstance(factory, Factory)
        election = await factory.new_election("res")
        assert isinstance(election, Election)
        assert isinstance(FaultyElection(election), Election)
        assert repr(election) == "<MemoryElection resource='res' instance='a' master=False>"


async def test_registered_scheme_is_used() -> None:
    backend = MemoryBackend()
    register("custom", lambda url, *, instance_id=None: backend.open_factory(instance_id))
    async with election2.open_factory("custom://anything", instance_id="z") as factory:
        assert factory.instance_id == "z"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("etcd://h:notaport/p", "'notaport'"),
        ("etcd://h:99999/p", "'h:99999'"),
        ("etcd:///p", "no host"),
        ("etcd://h:1//double//slash", "double"),
        ("etcd://h:1/p?ttl=1&ttl_typo=3", "ttl_typo"),
    ],
)
def test_parse_url_rejects(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        parse_url(url, default_port=2379, default_prefix="election2", options={})


def test_parse_url_multiple_endpoints_and_options() -> None:
    parsed = parse_url(
        "etcds://user:pw@a:1,b,c:3/jobs/prod?ttl=4&ca=/x.pem",
        default_port=2379,
        default_prefix="election2",
        options={},
        allowed=frozenset({"ca"}),
    )
    assert parsed.endpoints == [("a", 1), ("b", 2379), ("c", 3)]
    assert (parsed.prefix, parsed.ttl, parsed.username, parsed.password) == (
        "jobs/prod",
        4.0,
        "user",
        "pw",
    )
    assert parsed.query == {"ca": "/x.pem"}


def test_ttl_given_twice_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="twice"):
        parse_url("etcd://h/p?ttl=3", default_port=1, default_prefix="p", options={"ttl": 4})


@pytest.mark.parametrize(
    ("url", "endpoints"),
    [
        ("etcd://[::1]:2379/p", [("::1", 2379)]),
        ("etcd://[::1]/p", [("::1", 2379)]),
        (
            "etcd://[fe80::1]:1,127.0.0.1:2,localhost/p",
            [("fe80::1", 1), ("127.0.0.1", 2), ("localhost", 2379)],
        ),
    ],
)
def test_ipv6_hosts_in_brackets(url: str, endpoints: list[tuple[str, int]]) -> None:
    parsed = parse_url(url, default_port=2379, default_prefix="x", options={})
    assert parsed.endpoints == endpoints


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("etcd://::1:2379/p", "brackets"),
        ("etcd://[::1/p", "bad endpoint"),
        ("etcd://[::1]x/p", "bad endpoint"),
        ("etcd://h:1,h:1/p", "twice"),
        ("etcd://h/p?ttl=3&ttl=4", "twice"),
    ],
)
def test_bad_hosts_and_repeats_rejected(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        parse_url(url, default_port=2379, default_prefix="x", options={})
