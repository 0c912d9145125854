# Sourced by the other scripts: make sure python3 with venv exists, then a
# project venv at .venv with the given pip requirement installed.
# Usage: . scripts/setup-python.sh '.[dev]'
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv python3-pip)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    need_apt+=(python3-venv)
fi
install_apt() {
    [ "$#" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: $* (run as root, or: sudo apt-get install -y $*)" >&2
        exit 1
    fi
    apt-get update -qq
    apt-get install -y -qq "$@" >/dev/null
}
install_apt "${need_apt[@]}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e "$1"
