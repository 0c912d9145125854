"""The ``election2`` command.

``election2 demo`` shows an election on the in-memory backend (no server
needed). ``leader``, ``observe`` and ``run`` work on any URL::

    election2 leader etcd://127.0.0.1:2379/jobs nightly
    election2 observe redis://h1,h2,h3/jobs nightly
    election2 run --ttl 10 etcd://127.0.0.1:2379/jobs nightly -- ./nightly.sh

Every error is one line ``election2: ...`` on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

import trio

from ._supervisor import (
    EXIT_LOST,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    RunOptions,
    run_command,
    say,
)
from .demo import SCENES, run_demo
from .errors import ConfigurationError, ElectionError, InvalidResourceIdError
from .mechanisms import open_factory

URLS = """\
URLs (the path is the key prefix):
  memory://NAME                                   in-process backend (demo, tests)
  etcd://HOST:PORT[,HOST:PORT...]/PREFIX?ttl=S    etcd v3 (etcds:// for TLS)
  redis://HOST:PORT[,HOST:PORT...]/PREFIX?ttl=S   Redlock over the listed masters
                                                  (rediss:// for TLS)
  Hosts may be names, IPv4 or bracketed IPv6: etcd://[::1]:2379/jobs
"""

EXIT_STATUSES = f"""\
exit status of run:
  the command's own status; 128+N if it died of signal N or election2 was
  stopped by signal N (SIGTERM, SIGINT, SIGHUP are passed to the command)
  {EXIT_USAGE}    usage or configuration error
  {EXIT_LOST}    mastership lost: the command was killed
  {EXIT_TIMEOUT}    --timeout passed before winning
  {EXIT_UNAVAILABLE}    backend unavailable
  {EXIT_NOT_FOUND}  command not found (checked before campaigning)
"""

RUN_HELP = f"""\
Campaign for RESOURCE and run COMMAND while master, in a process group of its
own, with ELECTION2_RESOURCE, ELECTION2_INSTANCE and ELECTION2_FENCING_TOKEN in
its environment. If renewals fail, the command gets SIGTERM --kill-after
seconds before mastership could lapse and SIGKILL before it does; on a loss
the backend reports, SIGKILL at once. When the command exits, the election is
resigned, so a successor starts at once.

{URLS}
{EXIT_STATUSES}"""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``election2: ...`` line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        say(f"{message} (see '{self.prog} --help')")
        sys.exit(EXIT_USAGE)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value


def _version() -> str:
    try:
        return version("election2")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="election2",
        description="Per-resource master election on etcd, Redis or in memory.",
        epilog=f"{URLS}\n{EXIT_STATUSES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"election2 {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = commands.add_parser("demo", help="an election on the in-memory backend")
    demo.add_argument("--ttl", type=float, default=2.0, help="lease TTL in seconds (2)")
    demo.add_argument(
        "--virtual-time", action="store_true", help="run on trio's MockClock: instant"
    )
    demo.add_argument(
        "--scene",
        choices=["all", *SCENES],
        default="all",
        help="one election, a sharded fleet, or both (all)",
    )
    for name, text in (("leader", "print the current leader"), ("observe", "follow the leader")):
        sub = commands.add_parser(
            name, help=text, epilog=URLS, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub.add_argument("url")
        sub.add_argument("resource_id")
    run = commands.add_parser(
        "run",
        help="run a command while master",
        usage="election2 run [OPTIONS] URL RESOURCE [OPTIONS] -- COMMAND [ARGS...]",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("url")
    run.add_argument("resource_id")
    run.add_argument("--instance-id", help="the id a leader publishes (default host-pid-random)")
    run.add_argument("--ttl", type=_seconds, help="lease TTL in seconds (default: the URL's, 10)")
    run.add_argument("--timeout", type=_seconds, help="give up (exit 4) if not master by then")
    run.add_argument(
        "--kill-after",
        type=_seconds,
        help="seconds from SIGTERM to SIGKILL; below TTL/2 (default TTL/4, at most 5)",
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        metavar="P",
        help="serve Prometheus /metrics and /healthz on port P of every interface "
        "(needs election2[prometheus])",
    )
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is the command, never an option of ours.
    command: list[str] | None = None
    if "--" in arguments:
        split = arguments.index("--")
        arguments, command = arguments[:split], arguments[split + 1 :]
    parser = _parser()
    args = parser.parse_args(arguments)
    if args.command != "run" and command is not None:
        parser.error(f"'--' is only for 'election2 run', not {args.command!r}")
    try:
        if args.command == "demo":
            scenes = SCENES if args.scene == "all" else (args.scene,)
            return run_demo(ttl=args.ttl, virtual_time=args.virtual_time, scenes=scenes)
        if args.command == "leader":
            return trio.run(_leader, args.url, args.resource_id)
        if args.command == "observe":
            return trio.run(_observe, args.url, args.resource_id)
        if not command:
            parser.error("run needs the command after '--': election2 run URL RESOURCE -- COMMAND")
        if shutil.which(command[0]) is None:
            say(f"command not found: {command[0]!r}")
            return EXIT_NOT_FOUND
        options = RunOptions(
            url=args.url,
            resource_id=args.resource_id,
            command=command,
            instance_id=args.instance_id,
            ttl=args.ttl,
            timeout=args.timeout,
            kill_after=args.kill_after,
            metrics_port=args.metrics_port,
        )
        return trio.run(run_command, options)
    except (ConfigurationError, InvalidResourceIdError) as exc:
        say(str(exc))
        return EXIT_USAGE
    except ElectionError as exc:
        say(str(exc))
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
