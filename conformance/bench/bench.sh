#!/usr/bin/env bash
# bench.sh - the one benchmark command: bpf-registry vs CNCF distribution 2.8.2.
#
#   bash conformance/bench/bench.sh [--quick] [--reps N] [other bench.py options]
#
# 1. installs what it needs when missing (Debian docker-registry, wrk,
#    apache2-utils for ab, curl;
#    the Python venv with requests via conformance/install-deps.sh);
# 2. cargo build --release;
# 3. runs bench.py: both registries on 127.0.0.1 with fresh data dirs, every
#    workload against both, alternating, N repetitions; prints the table and
#    writes conformance/bench/results/latest.md (latest-quick.md with --quick).
# Exit status 0 unless something errored; no timing threshold fails the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
VENV="${BPF_VENV:-$HOME/.cache/bpf-registry-venv}"
PY="$VENV/bin/python"
export CARGO_TERM_COLOR=never
export BPF_BENCH_STARTED="${BPF_BENCH_STARTED:-$(date +%s.%N)}"

say() { echo "bench.sh: $*"; }

# --- tools -------------------------------------------------------------------
missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v ab >/dev/null 2>&1 || missing+=(apache2-utils)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
  say "installing apt packages: ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update
  $SUDO apt-get install -y "${missing[@]}"
fi
for cmd in docker-registry wrk ab curl; do
  command -v "$cmd" >/dev/null 2>&1 || { say "ERROR: $cmd is not installed"; exit 1; }
done

if [[ ! -x "$PY" ]]; then
  say "no venv at $VENV: running conformance/install-deps.sh"
  bash conformance/install-deps.sh
fi
if ! "$PY" -c 'import requests' >/dev/null 2>&1; then
  say "installing requests into $VENV"
  "$PY" -m pip install --quiet requests
fi

# --- build -------------------------------------------------------------------
say "cargo build --release"
cargo build --release

# --- run -----------------------------------------------------------------------
exec "$PY" conformance/bench/bench.py "$@"
