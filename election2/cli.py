"""The ``election2`` command.

``election2 demo`` shows an election on the in-memory backend (no server
needed). ``leader``, ``observe`` and ``run`` work on any URL::

    election2 leader etcd://127.0.0.1:2379/jobs nightly
    election2 observe redis://h1,h2,h3/jobs nightly
    election2 run etcd://127.0.0.1:2379/jobs nightly -- ./nightly.sh

``run`` campaigns, runs the command while master (``ELECTION2_FENCING_TOKEN``
in its environment) and kills it the moment mastership ends.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

import trio

from .demo import run_demo
from .errors import ElectionError
from .mechanisms import open_factory


async def _leader(url: str, resource_id: str) -> int:
    async with open_factory(url) as factory, await factory.new_election(resource_id) as election:
        print(await election.leader() or "(none)")
    return 0


async def _observe(url: str, resource_id: str) -> int:
    async with open_factory(url) as factory, await factory.new_election(resource_id) as election:
        async with election.observe() as changes:
            async for leader in changes:
                print(leader or "(none)", flush=True)
    return 0


async def _run(url: str, resource_id: str, command: list[str], instance_id: str | None) -> int:
    async with open_factory(url, instance_id=instance_id) as factory:
        async with await factory.new_election(resource_id) as election:
            print(f"election2: {factory.instance_id} campaigning for {resource_id!r}", flush=True)
            await election.await_mastership()
            token = election.fencing_token
            print(f"election2: master of {resource_id!r} (token {token})", flush=True)
            env = {**os.environ, "ELECTION2_FENCING_TOKEN": str(token)}
            async with election.with_mastership() as scope:
                # Cancelling run_process (mastership ended) kills the command.
                done = await trio.run_process(command, env=env, check=False)
            if scope.cancelled_caught:
                print("election2: mastership lost; command killed", file=sys.stderr)
                return 3
            await election.resign()
            return done.returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="election2", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="an election on the in-memory backend")
    demo.add_argument("--ttl", type=float, default=2.0, help="lease TTL in seconds (2)")
    demo.add_argument(
        "--virtual-time", action="store_true", help="run on trio's MockClock: instant"
    )
    for name, text in (("leader", "print the current leader"), ("observe", "follow the leader")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("url")
        sub.add_argument("resource_id")
    run = commands.add_parser("run", help="run a command while master")
    run.add_argument("url")
    run.add_argument("resource_id")
    run.add_argument("--instance-id")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- command and arguments")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(ttl=args.ttl, virtual_time=args.virtual_time)
        if args.command == "leader":
            return trio.run(_leader, args.url, args.resource_id)
        if args.command == "observe":
            return trio.run(_observe, args.url, args.resource_id)
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            parser.error("run needs a command after --")
        return trio.run(_run, args.url, args.resource_id, command, args.instance_id)
    except ElectionError as exc:
        print(f"election2: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
