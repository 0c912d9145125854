#!/usr/bin/env bash
# Install everything the benchmarks need (etcd, Redis and ZooKeeper servers
# from Debian's packages; the peer libraries are installed by the nox session
# into its own venv) and run `nox -s bench`. Arguments go to nox, e.g.
#   scripts/bench.sh -- bench/bench_peers.py
# Quicker runs: ELECTION2_BENCH_RESOURCES=1000 ELECTION2_BENCH_ROUNDS=5.
set -euo pipefail
cd "$(dirname "$0")/.."
servers=()
command -v etcd >/dev/null 2>&1 || servers+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || servers+=(etcd-client)
command -v redis-server >/dev/null 2>&1 || servers+=(redis-server)
# ZooKeeper for kazoo and tooz: the server package (jar and its classpath);
# the benchmark starts its own server, so zookeeperd's system service is not needed.
[ -e /usr/share/java/zookeeper.jar ] && command -v java >/dev/null 2>&1 || servers+=(zookeeper)
. scripts/setup-python.sh '.[dev]'
install_apt "${servers[@]}"
exec .venv/bin/nox -s bench "$@"
