#!/usr/bin/env bash
# Install election2 into .venv and run the demo on the in-memory backend.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-python.sh .
exec .venv/bin/election2 demo "$@"
