#!/usr/bin/env bash
# schemathesis.sh - fuzzes the REST API from its own OpenAPI document.
#
# Usage: conformance/schemathesis.sh [BINARY]   (default target/release/bpf-registry)
#
# Two passes, each its own server (BINARY on a free 127.0.0.1 port, a fresh
# data dir, stopped by its PID, everything removed at exit):
#   open     the default configuration (authentication and signing off);
#   secured  authentication on (a user granted everything on every repository
#            and every host, sent as Basic on every request, so /token
#            issues tokens) and a local signing key
#            (signatures, verification and the public key answer with data).
# Each pass seeds two artifacts with a host (an eBPF object when clang can
# build one, so the `ebpf` facts are checked too) and registers that host,
# checks GET /openapi.json
# with openapi-spec-validator (OpenAPI 3.1), then runs schemathesis on it:
# every phase (examples, coverage, fuzzing, stateful), a fixed seed, a
# bounded number of examples per operation, the parameter overrides of
# conformance/schemathesis.toml (a short `wait` for the long-polls), and the
# checks listed in CHECKS
# below (no 5xx; status codes, content types, headers and bodies as
# documented; 405 with `Allow` for other methods; a deleted artifact is gone
# and a created one is there). Any finding,
# or an error in the server's log, fails the run. Prints schemathesis's
# counts per pass. Tools come from the venv conformance/install-deps.sh
# fills; under CI=true a missing tool is a failure, never a skip. About a
# minute on 2 cores.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="${1:-target/release/bpf-registry}"
VENV="${BPF_VENV:-$HOME/.cache/bpf-registry-venv}"
PY="$VENV/bin/python"
ST="$VENV/bin/st"
VALIDATOR="$VENV/bin/openapi-spec-validator"
SEED="${SCHEMATHESIS_SEED:-20261130}"
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-60}"
# Parameter overrides (the long-polls' `wait`): see the file.
CONFIG="$PWD/conformance/schemathesis.toml"
# Every check but the two that judge the request against the schema's
# constraints: negative_data_rejection wants a schema-violating request
# refused with one of its own list of codes, which leaves out the 413 the
# field caps answer (documented: description_too_large, ...), and
# positive_data_acceptance wants every schema-valid request accepted, which
# no schema can promise for rules that depend on content (a cursor that
# decodes to no position, an ELF for another machine declared `program`).
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,missing_required_header,unsupported_method,allow_header_conformance,use_after_free,ensure_resource_availability,ignored_auth

log() { echo "schemathesis.sh: $*"; }
missing() {
  if [[ "${CI:-}" == "true" ]]; then log "FAIL: $1 is missing (CI=true)"; exit 1; fi
  log "SKIP: $1 is missing (run conformance/install-deps.sh)"
  exit 0
}
[[ -x "$BIN" ]] || missing "$BIN"
[[ -x "$ST" ]] || missing "$ST"
[[ -x "$VALIDATOR" ]] || missing "$VALIDATOR"

SERVER_PID=""
WORK=$(mktemp -d /tmp/bpf-registry-schemathesis.XXXXXX)
stop_server() {
  if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
  SERVER_PID=""
}
cleanup() {
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT

FAILED=()
COUNTS=()

# The seed eBPF object (an XDP program with BTF), when clang can build one.
SEED_OBJECT=""
if command -v clang >/dev/null 2>&1; then
  printf '%s\n' '#define SEC(n) __attribute__((section(n), used))' \
    'SEC("xdp") int xdp_pass(void *ctx) { return 2; }' \
    'char LICENSE[] SEC("license") = "GPL";' >"$WORK/prog.c"
  clang -target bpf -O2 -g -c "$WORK/prog.c" -o "$WORK/prog.o" \
    || { log "FAIL: clang could not build the seed object"; exit 1; }
  SEED_OBJECT="$WORK/prog.o"
elif [[ "${CI:-}" == "true" ]]; then
  log "FAIL: clang is missing (CI=true)"; exit 1
else
  log "clang missing: the seed artifact is not an eBPF object"
fi

# The counts line of one schemathesis log.
counts() {
  "$PY" - "$1" <<'PYEOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
def find(pattern):
    m = re.search(pattern, text)
    return m.group(1).strip() if m else "?"
print("%s operations tested; test cases: %s; stateful scenarios: %s; links: %s" % (
    find(r"Tested:\s*(\d+)"), find(r"Test cases:\s*\n\s*(.*)"),
    find(r"Scenarios:\s*(\d+)"), find(r"API Links:\s*(.*)")))
PYEOF
}

# run_pass NAME CREDENTIALS [VAR=VALUE...]: one server, seeded, fuzzed.
# CREDENTIALS (user:password, or empty) go with the seeding and with every
# schemathesis request.
run_pass() {
  local name="$1" credentials="$2"
  shift 2
  local dir="$WORK/$name"
  mkdir -p "$dir"
  local port url
  port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  url="http://127.0.0.1:$port"
  # The default storage (fs + SQLite in the data dir), whatever the shell has.
  env -u BPF_REGISTRY_METADATA -u BPF_REGISTRY_BLOB_STORE "$@" \
    BPF_REGISTRY_HTTP_ADDR="127.0.0.1:$port" BPF_REGISTRY_DATA_DIR="$dir/data" \
    BPF_REGISTRY_LOG_LEVEL=WARN "$BIN" >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "$url/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  if ! curl -fsS "$url/healthz" >/dev/null; then
    log "FAIL [$name]: the server did not start"; cat "$dir/server.log"
    FAILED+=("$name"); stop_server; return
  fi

  # Seed: two artifacts in two repositories, each with a host, so lists,
  # for-host answers and the stateful links have data.
  local curl_auth=() st_auth=()
  if [[ -n "$credentials" ]]; then curl_auth=(-u "$credentials"); st_auth=(--auth "$credentials"); fi
  local data1 id1 id2
  if [[ -n "$SEED_OBJECT" ]]; then data1=$(base64 -w0 "$SEED_OBJECT"); else data1=$(printf 'not elf' | base64 -w0); fi
  seed() { # name version type base64
    curl -fsS "${curl_auth[@]}" -o "$dir/created.json" -X POST "$url/artifacts" \
      -H 'Content-Type: application/json' \
      -d "{\"name\":\"$1\",\"version\":\"$2\",\"type\":\"$3\",\"architecture\":\"x86_64\",\"data\":\"$4\",\"tags\":[\"seed\"],\"hosts\":[\"node-1\"]}" \
      && "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$dir/created.json"
  }
  if ! id1=$(seed seed/xdp-pass 1.0.0 program "$data1") \
    || ! id2=$(seed seed/maps/events 2.0.0 map "$(printf 'map data' | base64 -w0)"); then
    log "FAIL [$name]: seeding"; FAILED+=("$name"); stop_server; return
  fi
  # node-1 registered too, so its desired set, deployments and the
  # rollouts answer with data.
  if ! curl -fsS "${curl_auth[@]}" -o /dev/null -X PUT "$url/hosts/node-1" \
    -H 'Content-Type: application/json' \
    -d '{"architecture":"x86_64","kernel_release":"6.1.0-13-amd64","btf":true,"labels":{"env":"prod"}}'; then
    log "FAIL [$name]: registering node-1"; FAILED+=("$name"); stop_server; return
  fi
  log "[$name] seeded $id1 and $id2, registered node-1"

  # The document, as served, is valid OpenAPI 3.1.
  if ! curl -fsS "$url/openapi.json" -o "$dir/openapi.json" || ! "$VALIDATOR" "$dir/openapi.json"; then
    log "FAIL [$name]: openapi-spec-validator refused /openapi.json"
    FAILED+=("$name"); stop_server; return
  fi

  log "[$name] st $("$ST" --version | awk '{print $NF}'): seed $SEED, $EXAMPLES examples per operation, checks $CHECKS"
  (cd "$dir" && "$ST" --no-color --config-file "$CONFIG" run "$url/openapi.json" "${st_auth[@]}" \
    --phases examples,coverage,fuzzing,stateful \
    --checks "$CHECKS" \
    --max-examples "$EXAMPLES" \
    --seed "$SEED" \
    --workers 1 \
    --request-timeout 20 \
    --report junit --report-dir "$dir/report") >"$dir/st.log" 2>&1
  local rc=$?
  cat "$dir/st.log"
  COUNTS+=("$name: $(counts "$dir/st.log")")
  stop_server
  # A 5xx is logged by the server even if schemathesis did not see it.
  if grep -qE ' ERROR ' "$dir/server.log"; then
    log "FAIL [$name]: the server logged errors:"
    grep -E ' ERROR ' "$dir/server.log" | head -20
    rc=1
  fi
  if ((rc != 0)); then
    log "FAIL [$name]: schemathesis found problems (exit $rc)"
    FAILED+=("$name")
  fi
}

run_pass open ""

if command -v htpasswd >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then
  FILES="$WORK/secured-files"
  mkdir -p "$FILES"
  htpasswd -nbB -C 5 fuzz 'fuzz-Pa55word' >"$FILES/htpasswd"
  printf '%s\n' '[[grant]]' 'users = ["fuzz"]' 'repositories = ["**"]' 'actions = ["*"]' \
    '[[grant]]' 'users = ["fuzz"]' 'hosts = ["*"]' 'actions = ["*"]' >"$FILES/policy.toml"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$FILES/signing-key.pem" 2>/dev/null
  chmod 600 "$FILES/signing-key.pem"
  run_pass secured "fuzz:fuzz-Pa55word" \
    BPF_REGISTRY_AUTH_HTPASSWD="$FILES/htpasswd" BPF_REGISTRY_AUTH_POLICY="$FILES/policy.toml" \
    BPF_REGISTRY_SIGNER=key BPF_REGISTRY_SIGNING_KEY="$FILES/signing-key.pem"
elif [[ "${CI:-}" == "true" ]]; then
  log "FAIL: htpasswd or openssl is missing (CI=true)"
  FAILED+=("secured")
else
  log "SKIP secured pass: htpasswd or openssl missing"
fi

log "schemathesis counts:"
printf '  %s\n' "${COUNTS[@]}"
if ((${#FAILED[@]})); then
  log "FAIL: ${FAILED[*]}"
  exit 1
fi
log "ok: no server error, every response conforms"
