#!/usr/bin/env bash
# bench.sh - the one benchmark command: bpf-registry vs CNCF distribution 2.8.2.
#
#   bash conformance/bench/bench.sh [--quick] [--reps N] [other bench.py options]
#   bash conformance/bench/bench.sh --fleet [--quick] [other fleet_bench.py options]
#
# --fleet (first argument) runs the fleet API benchmark instead (only that):
# installs wrk when missing, cargo build --release, starts the release binary
# on a fresh data dir with the open-file limit raised to the hard limit,
# BPF_REGISTRY_MAX_CONNECTIONS / BPF_REGISTRY_MAX_WATCHERS at 12000 (values
# already in the environment win, and every other BPF_REGISTRY_* of the
# environment reaches the server), runs fleet_bench.py against it and writes
# conformance/bench/results/fleet-latest.md (fleet-latest-quick.md with --quick).
#
# Without --fleet:
# 1. installs what it needs when missing (Debian docker-registry, wrk,
#    apache2-utils for ab, curl;
#    the Python venv with requests via conformance/install-deps.sh);
# 2. cargo build --release;
# 3. unless `--skip shared`: a throw-away PostgreSQL (conformance/postgres.sh)
#    and a one-node Garage (conformance/garage.sh; built once into its cache,
#    about 20 min the first time) on loopback, for the PostgreSQL + Garage
#    rows (bpf-registry on both, distribution's S3 driver on the same Garage)
#    and the PostgreSQL start-up rows; with `--skip shared` PostgreSQL alone
#    for those (unless `store` or `pg-startup` is skipped too); stopped at
#    the end;
# 4. runs bench.py: both registries on 127.0.0.1 with fresh data dirs, every
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

# --- --fleet: the fleet API benchmark, on its own -------------------------------
if [[ "${1:-}" == "--fleet" ]]; then
  shift
  if ! command -v wrk >/dev/null 2>&1; then
    say "installing wrk (apt)"
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y wrk || say "no wrk: fleet_bench.py falls back to its Python client"
  fi
  say "cargo build --release"
  cargo build --release
  FLEET_WORK=$(mktemp -d /tmp/bpf-fleet-bench.XXXXXX)
  FLEET_PID=""
  stop_fleet() {
    if [[ -n "$FLEET_PID" ]] && kill -0 "$FLEET_PID" 2>/dev/null; then
      kill "$FLEET_PID"
      wait "$FLEET_PID" 2>/dev/null || true
    fi
    rm -rf "$FLEET_WORK"
  }
  trap stop_fleet EXIT
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  out="conformance/bench/results/fleet-latest.md"
  if [[ " $* " == *" --quick "* ]]; then out="conformance/bench/results/fleet-latest-quick.md"; fi
  BPF_REGISTRY_HTTP_ADDR="127.0.0.1:$port" BPF_REGISTRY_DATA_DIR="$FLEET_WORK/data" \
    BPF_REGISTRY_LOG_LEVEL="${BPF_REGISTRY_LOG_LEVEL:-WARN}" \
    BPF_REGISTRY_MAX_CONNECTIONS="${BPF_REGISTRY_MAX_CONNECTIONS:-12000}" \
    BPF_REGISTRY_MAX_WATCHERS="${BPF_REGISTRY_MAX_WATCHERS:-12000}" \
    "${CARGO_TARGET_DIR:-target}/release/bpf-registry" >"$FLEET_WORK/server.log" 2>&1 &
  FLEET_PID=$!
  for _ in $(seq 1 600); do
    if curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$FLEET_PID" 2>/dev/null; then say "ERROR: the server exited: $(tail -5 "$FLEET_WORK/server.log")"; exit 1; fi
    sleep 0.1
  done
  say "bpf-registry on 127.0.0.1:$port (pid $FLEET_PID, open files $(ulimit -n))"
  status=0
  python3 conformance/bench/fleet_bench.py --url "http://127.0.0.1:$port" --pid "$FLEET_PID" --out "$out" "$@" || status=$?
  if [[ $status -ne 0 ]]; then say "server log tail:"; tail -20 "$FLEET_WORK/server.log" || true; fi
  exit $status
fi

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

# --- shared engines --------------------------------------------------------------
ENGINES_DIR=""
stop_engines() {
  if [[ -n "$ENGINES_DIR" ]]; then
    bash conformance/garage.sh stop "$ENGINES_DIR/garage" >/dev/null 2>&1 || true
    bash conformance/postgres.sh stop "$ENGINES_DIR/pg" >/dev/null 2>&1 || true
    rm -rf "$ENGINES_DIR"
  fi
}
if [[ " $* " != *shared* ]]; then
  ENGINES_DIR=$(mktemp -d /tmp/bpf-bench-engines.XXXXXX)
  # As root PostgreSQL runs as an unprivileged user: it must reach pg/
  # (search only; the folder stays unlistable).
  chmod 0711 "$ENGINES_DIR"
  trap stop_engines EXIT
  mkdir -p "$ENGINES_DIR/pg"
  mkdir -m 0700 "$ENGINES_DIR/garage"
  say "starting PostgreSQL and Garage for the shared-engine rows (and the PostgreSQL start-up rows)"
  pg_env=$(bash conformance/postgres.sh start "$ENGINES_DIR/pg")
  eval "$pg_env"
  bash conformance/garage.sh install
  eval "$(bash conformance/garage.sh start1 "$ENGINES_DIR/garage")"
  export BPF_BENCH_POSTGRES="$BPF_TEST_POSTGRES" BPF_BENCH_PSQL="$BPF_TEST_PSQL" BPF_BENCH_S3_URL="$BPF_TEST_S3_URL"
elif [[ " $* " != *store* && " $* " != *pg-startup* ]]; then
  # `--skip shared` alone: PostgreSQL still serves the start-up rows.
  ENGINES_DIR=$(mktemp -d /tmp/bpf-bench-engines.XXXXXX)
  # As root PostgreSQL runs as an unprivileged user: it must reach pg/
  # (search only; the folder stays unlistable).
  chmod 0711 "$ENGINES_DIR"
  trap stop_engines EXIT
  mkdir -p "$ENGINES_DIR/pg"
  say "starting PostgreSQL for the PostgreSQL start-up rows"
  pg_env=$(bash conformance/postgres.sh start "$ENGINES_DIR/pg")
  eval "$pg_env"
  export BPF_BENCH_POSTGRES="$BPF_TEST_POSTGRES" BPF_BENCH_PSQL="$BPF_TEST_PSQL"
fi

# --- run -----------------------------------------------------------------------
"$PY" conformance/bench/bench.py "$@"
