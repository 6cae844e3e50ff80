#!/usr/bin/env bash
# test-all.sh - the whole test suite of bpf-registry, the README's test command.
#
# 1. installs what the tests need (idempotent: conformance/install-deps.sh);
# 2. cargo fmt --check, cargo clippy -D warnings;
# 3. unit and integration tests (cargo test: real server on 127.0.0.1:0,
#    oci-client, raw HTTP, ELF objects compiled with clang);
# 4. builds the release binary, starts it on a free 127.0.0.1 port with a
#    fresh data dir, and runs the OCI conformance harness, the REST interop
#    script and the client interop script (oras-py, skopeo, distribution)
#    against it; then the crash harness (its own server, kill -9 under
#    load, restart, verify: conformance/crash_harness.py) and the auth
#    interop script (its own servers, HTTP and TLS, with users and a policy:
#    conformance/auth_interop.sh), a real Prometheus scraping /metrics
#    (its own server and Prometheus: conformance/prometheus.sh), the web
#    console in headless Chromium (its own servers: conformance/console.sh),
#    and
#    schemathesis against the REST API from its own /openapi.json,
#    validated by openapi-spec-validator (its own servers:
#    conformance/schemathesis.sh);
# 5. the fs + PostgreSQL configuration: a throw-away PostgreSQL
#    (conformance/postgres.sh, loopback only, as an unprivileged user),
#    cargo test again with BPF_TEST_METADATA=postgres (a database per test
#    server: tests/common/engines.rs), then the release binary on a fresh
#    database with the OCI conformance harness, the REST interop and the
#    client interop scripts against it;
# 6. the S3 + PostgreSQL configuration: Garage (conformance/garage.sh,
#    built once into ~/.cache/bpf-registry-garage, one node on loopback),
#    every test file except properties (parsers, no store),
#    payload_limits (refusals before anything is stored, checked on the
#    data dir's files) and migration (the previous version's fs layout)
#    with BPF_TEST_BLOB_STORE=s3 (fs-only tests inside them say so and
#    skip; tests/replicas.rs: three replicas on one database and one
#    bucket), then the release binary on a fresh database and bucket prefix
#    with the OCI conformance harness and REST interop, three replicas with
#    the harness, oras-py and skopeo going round-robin over them
#    (conformance/replicas_interop.sh), and the crash harness over three
#    replicas on a fresh database and a 3-node Garage of
#    its own (conformance/crash_harness.py --replicas 3);
# 7. prints a summary; exits non-zero if anything failed.
# Under CI=true a missing tool is a failure, never a skip. The PostgreSQL
# configuration is skipped only with BPF_TEST_SKIP_POSTGRES=1, and never
# under CI=true. PostgreSQL is started before the first cargo test, whose
# tests/postgres_harness.rs needs BPF_TEST_POSTGRES.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
VENV="${BPF_VENV:-$HOME/.cache/bpf-registry-venv}"
PY="$VENV/bin/python"
export CARGO_TERM_COLOR=never
# One clean build per run: incremental caches would only add to target/
# (several GB over the 30 test binaries) and to the build's time.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Free disk where target/ and the temp dirs go, printed at the start and
# the end: a full disk otherwise shows up as unrelated failures.
disk_report() {
  df -h --output=target,avail,size . /tmp 2>/dev/null | sed 's/^/  /'
  [[ -d target ]] && du -sh target 2>/dev/null | sed 's/^/  target: /'
  return 0
}

step() { printf '\n==== %s\n' "$*"; }
FAILED_STEPS=()
run() {
  local name="$1"; shift
  step "$name"
  if "$@"; then echo "---- $name: ok"; else echo "---- $name: FAILED"; FAILED_STEPS+=("$name"); fi
}

step "disk before the run"
disk_report
step "install dependencies"
bash conformance/install-deps.sh || { echo "install-deps failed"; exit 1; }

SERVER_PID=""
DATA_DIRS=()
PG_DIR=""
GARAGE_DIR=""
cleanup() {
  stop_server
  if [[ -n "$GARAGE_DIR" ]]; then
    bash conformance/garage.sh stop "$GARAGE_DIR" || echo "could not stop the Garage in $GARAGE_DIR"
    rm -rf "$GARAGE_DIR"
  fi
  if [[ -n "$PG_DIR" ]]; then
    bash conformance/postgres.sh stop "$PG_DIR" || echo "could not stop the PostgreSQL in $PG_DIR"
    rm -rf "$PG_DIR"
  fi
  if ((${#DATA_DIRS[@]})); then rm -rf "${DATA_DIRS[@]}"; fi
}
trap cleanup EXIT

# start_server [VAR=value...]: the release binary on a free 127.0.0.1 port
# over a fresh data dir, with the given extra variables (the storage
# variables of the caller's shell are not inherited); sets SERVER_PID and
# URL; fails if /healthz does not answer within 10 s.
start_server() {
  local port data_dir
  port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  data_dir=$(mktemp -d /tmp/bpf-registry-test.XXXXXX)
  DATA_DIRS+=("$data_dir")
  env -u BPF_REGISTRY_METADATA -u BPF_REGISTRY_BLOB_STORE \
    BPF_REGISTRY_HTTP_ADDR="127.0.0.1:$port" BPF_REGISTRY_DATA_DIR="$data_dir" \
    BPF_REGISTRY_LOG_LEVEL=WARN "$@" \
    target/release/bpf-registry >"$data_dir.log" 2>&1 &
  SERVER_PID=$!
  URL="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    curl -fsS "$URL/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the server on $URL did not start; log $data_dir.log:"
  tail -n 20 "$data_dir.log"
  return 1
}

stop_server() {
  if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
  SERVER_PID=""
}

# crash_harness_replicas DB_URL: the crash harness's replicas mode on its
# own 3-node Garage (temp dir, free ports; its AWS_* stay in the subshell),
# stopped and removed on the way out whatever happens.
crash_harness_replicas() (
  local dir garage_env
  dir=$(mktemp -d /tmp/bpf-registry-garage3.XXXXXX)
  trap 'bash conformance/garage.sh stop "$dir"; rm -rf "$dir"' EXIT
  garage_env=$(bash conformance/garage.sh start3 "$dir") || { echo "could not start 3 Garage nodes"; exit 1; }
  eval "$garage_env"
  timeout 600 "$PY" conformance/crash_harness.py --binary target/release/bpf-registry --rounds 5 \
    --replicas 3 --metadata "$1" --blob-store "$BPF_TEST_S3_URL" --garage-dir "$dir"
)

# PostgreSQL for the fs + PostgreSQL configuration (exports BPF_TEST_POSTGRES,
# BPF_TEST_PSQL).
if [[ "${CI:-}" != true && "${BPF_TEST_SKIP_POSTGRES:-}" == 1 ]]; then
  step "PostgreSQL: skipped (BPF_TEST_SKIP_POSTGRES=1)"
else
  step "start PostgreSQL"
  PG_DIR=$(mktemp -d /tmp/bpf-registry-pg.XXXXXX)
  if PG_ENV=$(bash conformance/postgres.sh start "$PG_DIR"); then
    eval "$PG_ENV"
    echo "---- start PostgreSQL: ok ($BPF_TEST_POSTGRES)"
  else
    echo "---- start PostgreSQL: FAILED"
    FAILED_STEPS+=("start PostgreSQL")
  fi
fi

# Garage (a real S3 store) for the backend suite (tests/blob_backends.rs)
# and the S3 + PostgreSQL configuration: built once into a cache
# (conformance/garage.sh install; about 20 min on 2 cores the first time),
# one node on loopback (exports BPF_TEST_S3_URL and the AWS_* key).
step "start Garage"
if bash conformance/garage.sh install; then
  GARAGE_DIR=$(mktemp -d /tmp/bpf-registry-garage.XXXXXX)
  if GARAGE_ENV=$(bash conformance/garage.sh start1 "$GARAGE_DIR"); then
    eval "$GARAGE_ENV"
    echo "---- start Garage: ok ($BPF_TEST_S3_URL)"
  else
    echo "---- start Garage: FAILED"
    FAILED_STEPS+=("start Garage")
  fi
else
  echo "---- install Garage: FAILED"
  FAILED_STEPS+=("install Garage")
fi

run "cargo fmt --check" cargo fmt --all -- --check
run "cargo clippy" cargo clippy --all-targets -- -D warnings
run "cargo test (unit + integration)" env BPF_TEST_METADATA=sqlite BPF_TEST_BLOB_STORE=fs cargo test --all-targets
run "cargo build --release" cargo build --release

# ---- default configuration: fs + SQLite --------------------------------------
if [[ -x target/release/bpf-registry ]]; then
  if run "start release server (fs + SQLite)" start_server; then
    run "OCI conformance harness" "$PY" conformance/oci_conformance.py --url "$URL"
    run "REST interop (oras-py)" "$PY" conformance/rest_interop.py --url "$URL"
    run "client interop (oras-py, skopeo, distribution)" bash conformance/interop.sh "$URL"
  fi
  stop_server
  # authentication, policy and TLS with oras-py, skopeo, curl (own servers)
  run "auth interop" bash conformance/auth_interop.sh target/release/bpf-registry
  # a real Prometheus scrapes /metrics (own server, own Prometheus, loopback)
  run "prometheus scrape" bash conformance/prometheus.sh target/release/bpf-registry
  # the web console in headless Chromium (own servers; screenshots into
  # target/console-screenshots/ and docs/console/)
  run "web console (Chromium)" bash conformance/console.sh target/release/bpf-registry
  # kill -9 under load, restart, verify everything acknowledged (own server
  # and data dir; 5 rounds, well under 3 minutes).
  run "crash harness" "$PY" conformance/crash_harness.py --binary target/release/bpf-registry --rounds 5 --events
  # the REST API fuzzed from its own /openapi.json (own servers: auth off,
  # then auth and signing on; fixed seed, bounded examples, about 2 minutes)
  run "schemathesis (REST API from /openapi.json)" bash conformance/schemathesis.sh target/release/bpf-registry
else
  FAILED_STEPS+=("release binary missing")
fi

# ---- fs + PostgreSQL ---------------------------------------------------------
if [[ -n "${BPF_TEST_POSTGRES:-}" ]]; then
  run "cargo test (fs + PostgreSQL)" env BPF_TEST_METADATA=postgres BPF_TEST_BLOB_STORE=fs cargo test --all-targets
  PG_REGISTRY_DB="registry_$(date +%s)_$$"
  if [[ -x target/release/bpf-registry ]] \
    && run "create database $PG_REGISTRY_DB" \
      "$BPF_TEST_PSQL" -X -q -v ON_ERROR_STOP=1 -d "$BPF_TEST_POSTGRES" -c "CREATE DATABASE $PG_REGISTRY_DB" \
    && run "start release server (fs + PostgreSQL)" \
      start_server BPF_REGISTRY_METADATA="${BPF_TEST_POSTGRES%/*}/$PG_REGISTRY_DB"; then
    run "OCI conformance harness (fs + PostgreSQL)" "$PY" conformance/oci_conformance.py --url "$URL"
    run "REST interop (oras-py) (fs + PostgreSQL)" "$PY" conformance/rest_interop.py --url "$URL"
    run "client interop (fs + PostgreSQL)" bash conformance/interop.sh "$URL"
  fi
  stop_server
elif [[ "${CI:-}" == true || "${BPF_TEST_SKIP_POSTGRES:-}" != 1 ]]; then
  FAILED_STEPS+=("fs + PostgreSQL: no PostgreSQL")
fi

# ---- S3 (Garage) + PostgreSQL --------------------------------------------------
# Every test file but properties, payload_limits and migration (see the
# header; tests that read blob files or fill a tmpfs skip themselves there),
# the replicas on one database and one bucket, then the release binary on
# a fresh database and a fresh bucket prefix with the conformance harness
# and the REST interop.
if [[ -n "${BPF_TEST_POSTGRES:-}" && -n "${BPF_TEST_S3_URL:-}" ]]; then
  run "cargo test (S3 + PostgreSQL)" env BPF_TEST_METADATA=postgres BPF_TEST_BLOB_STORE=s3 \
    cargo test --test blob_backends --test oci_api --test oci_client --test rest_api \
      --test replicas --test security_v2 --test security_rest --test metadata_engines \
      --test auth --test connections --test manifest_checks --test metrics --test openapi \
      --test robustness_rest --test signing --test events --test console --test migrate \
      --test storage_names --test internal_failures --test reliability
  S3_DB="t_s3_$(date +%s)_$$"
  S3_PREFIX="ci-$(date +%s)-$$"
  S3_URL="${BPF_TEST_S3_URL/\?//$S3_PREFIX?}"
  if run "create database $S3_DB" \
      "$BPF_TEST_PSQL" -X -q -v ON_ERROR_STOP=1 -d "$BPF_TEST_POSTGRES" -c "CREATE DATABASE $S3_DB" \
    && run "start release server (S3 + PostgreSQL)" \
      start_server BPF_REGISTRY_METADATA="${BPF_TEST_POSTGRES%/*}/$S3_DB" BPF_REGISTRY_BLOB_STORE="$S3_URL"; then
    run "OCI conformance harness (S3 + PostgreSQL)" "$PY" conformance/oci_conformance.py --url "$URL"
    run "REST interop (oras-py) (S3 + PostgreSQL)" "$PY" conformance/rest_interop.py --url "$URL"
  fi
  stop_server
  # Three replicas on one database and one bucket prefix with real clients:
  # the harness on replica 1 while replica 2 serves the same repositories,
  # then the harness, oras-py and skopeo through a per-request round-robin
  # proxy (own replicas, database and prefix; about a minute).
  run "replicas: harness, oras-py, skopeo round-robin (S3 + PostgreSQL)" \
    bash conformance/replicas_interop.sh target/release/bpf-registry
  # The fault test: three replicas on one database and one bucket prefix,
  # each client request to a random replica, kill -9 of a replica mid-push
  # and of one node of its own 3-node Garage (replication factor 3) at
  # random moments; 0 acknowledged writes lost, 0 torn objects, the
  # survivors keep serving (about 3 minutes).
  CRASH_DB="t_crash_$(date +%s)_$$"
  if [[ -x target/release/bpf-registry ]] && run "create database $CRASH_DB" \
      "$BPF_TEST_PSQL" -X -q -v ON_ERROR_STOP=1 -d "$BPF_TEST_POSTGRES" -c "CREATE DATABASE $CRASH_DB"; then
    run "crash harness (3 replicas, S3 on 3 Garage nodes + PostgreSQL)" \
      crash_harness_replicas "${BPF_TEST_POSTGRES%/*}/$CRASH_DB"
  fi
else
  FAILED_STEPS+=("S3 + PostgreSQL: no PostgreSQL or no Garage")
fi

step "disk after the run"
disk_report
step "summary"
if ((${#FAILED_STEPS[@]})); then
  printf 'failed: %s\n' "${FAILED_STEPS[@]}"
  echo "0 passed, ${#FAILED_STEPS[@]} failed"
  exit 1
fi
echo "all steps passed"
