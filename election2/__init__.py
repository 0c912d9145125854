"""election2: trio-native per-resource master election.

An instance competes for resources; at most one instance is master of a
resource at a time, and guarded work runs in a :class:`trio.CancelScope`
that ends with mastership::

    async with election2.open_factory("etcd://127.0.0.1:2379/jobs") as factory:
        election = await factory.new_election("nightly-report")
        await election.await_mastership()
        async with election.with_mastership() as scope:
            await do_the_work(fencing_token=election.fencing_token)
"""

from ._election import BaseElection, BaseFactory, Election, Factory, Health
from ._events import ElectionEvent
from .errors import (
    ConfigurationError,
    ElectionClosedError,
    ElectionError,
    InvalidResourceIdError,
    MechanismUnavailableError,
)
from .mechanisms import open_factory

__version__ = "0.1.0"

__all__ = [
    "BaseElection",
    "BaseFactory",
    "ConfigurationError",
    "Election",
    "ElectionClosedError",
    "ElectionError",
    "ElectionEvent",
    "Factory",
    "Health",
    "InvalidResourceIdError",
    "MechanismUnavailableError",
    "open_factory",
]
