#!/usr/bin/env bash
# replicas_interop.sh - real clients against three replicas on one PostgreSQL
# database and one S3 bucket prefix (issue 12's replica tests):
#
#   a. the OCI conformance harness against replica 1 while replica 2 serves
#      the same repositories (a reader lists the catalog, every tag list and
#      HEADs every tagged manifest on replica 2 the whole time: never a 5xx,
#      and at the end replica 2 lists what replica 1 was given);
#   b. the conformance harness through a per-request round-robin proxy
#      (conformance/replica_proxy.py): every request, an upload session's
#      POST, PATCHes and PUT included, to the next replica;
#   c. oras-py, skopeo and the referrers checks (conformance/interop.sh)
#      through that proxy;
#   d. every replica served requests through the proxy.
#
# Usage: conformance/replicas_interop.sh BINARY
# Needs BPF_TEST_POSTGRES, BPF_TEST_PSQL (conformance/postgres.sh) and
# BPF_TEST_S3_URL with the AWS_* key (conformance/garage.sh). Creates its own
# database and bucket prefix; stops what it starts, by PID. Prints PASS/FAIL
# per step, then "N passed, N failed"; exits 1 on any failure.
set -uo pipefail

BIN="${1:?usage: $0 BINARY}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${BPF_VENV:-$HOME/.cache/bpf-registry-venv}/bin/python"
: "${BPF_TEST_POSTGRES:?needs BPF_TEST_POSTGRES (conformance/postgres.sh)}"
: "${BPF_TEST_PSQL:?needs BPF_TEST_PSQL}"
: "${BPF_TEST_S3_URL:?needs BPF_TEST_S3_URL (conformance/garage.sh)}"

PASSED=0
FAILED=0
pass() { echo "PASS $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1: $2"; FAILED=$((FAILED + 1)); }

WORK=$(mktemp -d /tmp/bpf-replicas-interop.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

DB="ri_$(date +%s)_$$"
"$BPF_TEST_PSQL" -X -q -v ON_ERROR_STOP=1 -d "$BPF_TEST_POSTGRES" -c "CREATE DATABASE $DB" \
  || { echo "FAIL setup: cannot create database $DB"; echo "0 passed, 1 failed"; exit 1; }
META="${BPF_TEST_POSTGRES%/*}/$DB"
PREFIX="ri-$(date +%s)-$$"
S3_URL="${BPF_TEST_S3_URL/\?//$PREFIX?}"

URLS=()
for i in 1 2 3; do
  port=$(free_port)
  BPF_REGISTRY_HTTP_ADDR="127.0.0.1:$port" BPF_REGISTRY_DATA_DIR="$WORK/replica$i" \
    BPF_REGISTRY_METADATA="$META" BPF_REGISTRY_BLOB_STORE="$S3_URL" \
    BPF_REGISTRY_GC_INTERVAL=0 BPF_REGISTRY_LOG_LEVEL=WARN \
    "$BIN" >"$WORK/replica$i.log" 2>&1 &
  PIDS+=($!)
  URLS+=("http://127.0.0.1:$port")
done
for u in "${URLS[@]}"; do
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$u/healthz" 2>/dev/null && break
    sleep 0.1
  done
  curl -fsS -o /dev/null "$u/healthz" \
    || { echo "FAIL setup: replica $u did not become healthy"; cat "$WORK"/replica*.log; echo "0 passed, 1 failed"; exit 1; }
done
"$PY" "$HERE/replica_proxy.py" --listen-port-file "$WORK/proxy.port" "${URLS[@]}" &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
for _ in $(seq 1 100); do [[ -s "$WORK/proxy.port" ]] && break; sleep 0.05; done
PROXY="http://127.0.0.1:$(cat "$WORK/proxy.port")"
echo "replicas: ${URLS[*]}; round-robin proxy: $PROXY; database $DB; prefix $PREFIX"

# --- a. harness on replica 1, a reader on replica 2 at the same time --------------
touch "$WORK/reading"
"$PY" - "${URLS[1]}" "$WORK/reading" "$WORK/reader.out" <<'EOF' &
import json, os, sys, time, urllib.request, urllib.error
base, flag, out = sys.argv[1:4]
reads, errors = 0, []
def get(path, method="GET"):
    global reads
    req = urllib.request.Request(base + path, method=method,
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            reads += 1
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        reads += 1
        if e.code >= 500:
            errors.append(f"{method} {path}: {e.code}")
        return e.code, b""
while os.path.exists(flag):
    status, body = get("/v2/_catalog?n=1000")
    for repo in (json.loads(body).get("repositories") or []) if status == 200 else []:
        s, b = get(f"/v2/{repo}/tags/list")
        for tag in (json.loads(b).get("tags") or [])[:20] if s == 200 else []:
            get(f"/v2/{repo}/manifests/{tag}", "HEAD")
    time.sleep(0.05)
json.dump({"reads": reads, "errors": errors}, open(out, "w"))
EOF
READER=$!
if "$PY" "$HERE/oci_conformance.py" --url "${URLS[0]}" --repo "ri/conformance" >"$WORK/a.out" 2>&1; then
  pass "a. conformance harness on replica 1 ($(tail -1 "$WORK/a.out"))"
else
  fail "a. conformance harness on replica 1" "$(grep '^FAIL' "$WORK/a.out" | head -5)"
fi
rm -f "$WORK/reading"
wait "$READER"
if [[ -s "$WORK/reader.out" ]] && "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r["reads"] > 0 and not r["errors"] else 1)' "$WORK/reader.out"; then
  pass "a. replica 2 served the same repositories meanwhile, no 5xx ($(cat "$WORK/reader.out"))"
else
  fail "a. replica 2 while replica 1 was tested" "$(cat "$WORK/reader.out" 2>/dev/null)"
fi
# What replica 1 was given, replica 2 lists (read-your-writes across replicas).
cat1=$(curl -fsS "${URLS[0]}/v2/_catalog?n=1000")
cat2=$(curl -fsS "${URLS[1]}/v2/_catalog?n=1000")
if [[ -n "$cat1" && "$cat1" == "$cat2" ]]; then
  pass "a. both replicas list the same catalog"
else
  fail "a. catalogs differ" "replica 1: $cat1; replica 2: $cat2"
fi

# --- b. the harness through the round-robin proxy ------------------------------------
if "$PY" "$HERE/oci_conformance.py" --url "$PROXY" --repo "ri/round-robin" >"$WORK/b.out" 2>&1; then
  pass "b. conformance harness through the round-robin proxy ($(tail -1 "$WORK/b.out"))"
else
  fail "b. conformance harness through the round-robin proxy" "$(grep '^FAIL' "$WORK/b.out" | head -5)"
fi

# --- c. oras-py, skopeo, referrers through the proxy ------------------------------------
if bash "$HERE/interop.sh" "$PROXY" >"$WORK/c.out" 2>&1; then
  pass "c. oras-py, skopeo and referrers through the round-robin proxy ($(tail -1 "$WORK/c.out"))"
else
  fail "c. client interop through the round-robin proxy" "$(grep '^FAIL' "$WORK/c.out" | head -5)"
fi

# --- d. every replica took part ------------------------------------------------------------
kill "$PROXY_PID" 2>/dev/null
wait "$PROXY_PID" 2>/dev/null
stats=$(cat "$WORK/proxy.port.stats" 2>/dev/null)
if "$PY" -c 'import json,sys; s=json.loads(sys.argv[1])["served"]; sys.exit(0 if len(s) == 3 and min(s) > 0 else 1)' "$stats" 2>/dev/null; then
  pass "d. requests served per replica through the proxy: $stats"
else
  fail "d. requests per replica" "${stats:-no stats}"
fi
for i in 1 2 3; do
  if grep -q "panicked" "$WORK/replica$i.log"; then
    fail "replica $i log" "$(grep -m3 panicked "$WORK/replica$i.log")"
  fi
done

echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
