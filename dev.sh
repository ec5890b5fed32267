#!/usr/bin/env bash
# Set up everything hacluster needs on Debian 12 (as root), then run one thing:
#   ./dev.sh demo     local cluster, a host dies, its VMs come back elsewhere (timeline)
#   ./dev.sh test     the full test suite: ruff, mypy, pytest
#   ./dev.sh setup    only set up
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc pkg-config libvirt-dev
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 tini
  ipmitool openipmi fence-agents iproute2 iptables nftables procps
)

need_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "dev.sh: installing apt packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

setup() {
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    need_apt
  fi
  local py=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
  fi
  local stamp=.venv/.hacluster-installed
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[dev]'
    touch "$stamp"
  fi
}

# The rolling upgrade test (tests/upgrade) builds the previous release from git history,
# which a shallow clone (CI's `git clone --depth N`) lacks: deepen it from its remote.
# Only adds history objects and tags (the work tree and branches stay as they are); a
# failed fetch (offline) is reported and that test then fails naming the cause.
unshallow() {
  command -v git >/dev/null || return 0
  [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = true ] || return 0
  local remote
  remote=$(git remote | head -n 1)
  if [ -z "$remote" ]; then
    echo "dev.sh: shallow clone without a remote: tests/upgrade cannot build the previous release" >&2
    return 0
  fi
  echo "dev.sh: shallow clone: fetching the history and tags from $remote (tests/upgrade)" >&2
  git fetch -q --unshallow --tags "$remote" ||
    echo "dev.sh: git fetch --unshallow failed: tests/upgrade will fail" >&2
}

# The whole suite runs the short soak (tests/soak, about 2.5 minutes, mostly waiting on
# its lab's fault timings) beside the rest, so the suite stays under 15 minutes on two
# cores; its output follows the rest's, and either one failing fails the run. With
# arguments, pytest runs just what they name. The 25 slowest tests are listed at the end
# (the budget is 15 minutes).
run_tests() {
  unshallow
  .venv/bin/ruff check hacluster tests bench scripts contrib
  .venv/bin/mypy
  if [ "$#" -gt 0 ]; then
    .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
    return
  fi
  local soak_log soak_pid rest=0 soak=0
  soak_log=$(mktemp /tmp/hacluster-soak-test.XXXXXX)
  .venv/bin/python -m pytest -q -p no:cacheprovider tests/soak >"$soak_log" 2>&1 &
  soak_pid=$!
  .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 --ignore=tests/soak || rest=$?
  wait "$soak_pid" || soak=$?
  echo "--- tests/soak (ran beside the rest) ---"
  cat "$soak_log"
  rm -f "$soak_log"
  [ "$rest" -eq 0 ] && [ "$soak" -eq 0 ]
}

cmd=${1:-}
shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; exec .venv/bin/hacluster demo "$@" ;;
  test) setup; run_tests "$@" ;;
  *) echo "usage: ./dev.sh demo|test|setup" >&2; exit 2 ;;
esac
