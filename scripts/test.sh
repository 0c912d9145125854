#!/usr/bin/env bash
# Install everything the test suite needs (etcd and Redis servers included)
# and run the nox sessions tests, lint, typecheck and docs.
set -euo pipefail
cd "$(dirname "$0")/.."
servers=()
command -v etcd >/dev/null 2>&1 || servers+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || servers+=(etcd-client)
command -v redis-server >/dev/null 2>&1 || servers+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || servers+=(redis-tools)
command -v openssl >/dev/null 2>&1 || servers+=(openssl)  # certificates for the TLS tests
. scripts/setup-python.sh '.[dev]'
install_apt "${servers[@]}"
exec .venv/bin/nox --no-error-on-missing-interpreters -s tests lint typecheck docs "$@"
