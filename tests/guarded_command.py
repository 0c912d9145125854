"""A command for ``election2 run`` tests: ``python -m tests.guarded_command LOG [options]``.

Appends ``<instance> <token> <time.monotonic()>`` to LOG every 20 ms (one clock
for every process on the machine). ``--ignore-term`` ignores SIGTERM;
``--grandchild PIDFILE`` starts a ``sleep`` that must die with it and writes
its pid to PIDFILE.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--grandchild")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.grandchild:
        sleeper = subprocess.Popen(["sleep", "1000"])
        with open(args.grandchild, "w") as out:
            out.write(str(sleeper.pid))
    instance = os.environ["ELECTION2_INSTANCE"]
    token = os.environ["ELECTION2_FENCING_TOKEN"]
    with open(args.log, "a", buffering=1) as log:
        while True:
            log.write(f"{instance} {token} {time.monotonic()}\n")
            time.sleep(0.02)


if __name__ == "__main__":
    main()
