"""``python -m chaos --backend etcd|redis|both --seed N --duration 60``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio

from .campaign import run_campaign
from .report import CampaignResult


async def main(
    backends: list[str], seed: int, duration: float, directory: Path | None, stuck_leaders: bool
) -> list[CampaignResult]:
    results = []
    for backend in backends:  # one at a time: they compete for the same cores
        result = await run_campaign(
            backend,
            seed,
            duration,
            directory=directory / backend if directory else None,
            stuck_leaders=stuck_leaders,
        )
        print(result.markdown(), end="\n\n", flush=True)
        results.append(result)
    return results


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--backend", choices=["etcd", "redis", "both"], default="both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults")
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep histories, logs and server data here"
    )
    parser.add_argument(
        "--stuck-etcd-leaders",
        action="store_true",
        help="also pause the etcd leader past its election timeout: etcd 3.4.23 then revokes "
        "live leases when it resumes (etcd-io/etcd#15247), which the checker reports",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    backends = ["etcd", "redis"] if args.backend == "both" else [args.backend]
    results = trio.run(main, backends, args.seed, args.duration, args.keep, args.stuck_etcd_leaders)
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(cli())
