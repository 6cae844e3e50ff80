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
#    conformance/auth_interop.sh); then schemathesis against the REST API
#    from its own /openapi.json, validated by openapi-spec-validator
#    (conformance/schemathesis.sh);
# 5. prints a summary; exits non-zero if anything failed.
# Under CI=true a missing tool is a failure, never a skip.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
VENV="${BPF_VENV:-$HOME/.cache/bpf-registry-venv}"
PY="$VENV/bin/python"
export CARGO_TERM_COLOR=never

step() { printf '\n==== %s\n' "$*"; }
FAILED_STEPS=()
run() {
  local name="$1"; shift
  step "$name"
  if "$@"; then echo "---- $name: ok"; else echo "---- $name: FAILED"; FAILED_STEPS+=("$name"); fi
}

step "install dependencies"
bash conformance/install-deps.sh || { echo "install-deps failed"; exit 1; }

run "cargo fmt --check" cargo fmt --all -- --check
run "cargo clippy" cargo clippy --all-targets -- -D warnings
run "cargo test (unit + integration)" cargo test --all-targets
run "cargo build --release" cargo build --release

SERVER_PID=""
DATA_DIR=""
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
  if [[ -n "$DATA_DIR" ]]; then rm -rf "$DATA_DIR"; fi
}
trap cleanup EXIT

if [[ -x target/release/bpf-registry ]]; then
  PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  DATA_DIR=$(mktemp -d /tmp/bpf-registry-test.XXXXXX)
  BPF_REGISTRY_HTTP_ADDR="127.0.0.1:$PORT" BPF_REGISTRY_DATA_DIR="$DATA_DIR" BPF_REGISTRY_LOG_LEVEL=WARN \
    target/release/bpf-registry >"$DATA_DIR.log" 2>&1 &
  SERVER_PID=$!
  URL="http://127.0.0.1:$PORT"
  for _ in $(seq 1 100); do
    curl -fsS "$URL/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  run "OCI conformance harness" "$PY" conformance/oci_conformance.py --url "$URL"
  run "REST interop (oras-py)" "$PY" conformance/rest_interop.py --url "$URL"
  run "client interop (oras-py, skopeo, distribution)" bash conformance/interop.sh "$URL"
  # authentication, policy and TLS with oras-py, skopeo, curl (own servers)
  run "auth interop" bash conformance/auth_interop.sh target/release/bpf-registry
  # kill -9 under load, restart, verify everything acknowledged (own server
  # and data dir; 5 rounds, well under 3 minutes).
  run "crash harness" "$PY" conformance/crash_harness.py --binary target/release/bpf-registry --rounds 5
  # the REST API fuzzed from its own /openapi.json (own servers: auth off,
  # then auth and signing on; fixed seed, bounded examples, about 2 minutes)
  run "schemathesis (REST API from /openapi.json)" bash conformance/schemathesis.sh target/release/bpf-registry
else
  FAILED_STEPS+=("release binary missing")
fi

step "summary"
if ((${#FAILED_STEPS[@]})); then
  printf 'failed: %s\n' "${FAILED_STEPS[@]}"
  echo "0 passed, ${#FAILED_STEPS[@]} failed"
  exit 1
fi
echo "all steps passed"
