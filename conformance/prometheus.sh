#!/usr/bin/env bash
# prometheus.sh - a real Prometheus scrapes bpf-registry's GET /metrics.
#
# Usage: conformance/prometheus.sh [path/to/bpf-registry]
#        (default binary: target/release/bpf-registry)
#
# Starts the registry on a free 127.0.0.1 port with authentication on (a
# user made with `htpasswd -B`) and BPF_REGISTRY_METRICS_TOKEN set, and a
# Prometheus (Debian `prometheus`) on another free 127.0.0.1 port that
# scrapes /metrics every second with that token as its bearer credential.
# Then:
#   a. pushes and reads through /v2 (blob upload, manifest PUT and GET, blob
#      GET, tags list) and REST (POST /artifacts, list, binary), with curl;
#   b. waits for Prometheus to scrape, and queries its HTTP API
#      (/api/v1/query?query=http_server_request_duration_seconds_count):
#      every exercised (method, route template) is there, the target is up,
#      and no label value holds the repository name or a digest;
#   c. `promtool check metrics` passes on the exposition;
#   d. /metrics refuses a scrape without the token (401).
# Both processes are stopped (by PID) on exit; the data lives in a temp dir.
# Prints PASS/FAIL per step, then "N passed, N failed"; exits 1 on failure.
# Under CI=true a missing tool is a failure; otherwise it is installed with
# conformance/install-deps.sh, and the run is skipped if that fails.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="${1:-$ROOT/target/release/bpf-registry}"
VENV="${BPF_VENV:-$HOME/.cache/bpf-registry-venv}"
PY="$VENV/bin/python"
[[ -x "$PY" ]] || PY=python3
# How long Prometheus may take to start and to have scraped (a liveness
# bound, not a measurement).
WAIT_SECS=60

PASSED=0
FAILED=0
pass() { echo "PASS $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1: $2"; FAILED=$((FAILED + 1)); }
finish() {
  echo "$PASSED passed, $FAILED failed"
  ((FAILED == 0))
  exit $?
}

tools_present() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null \
    && command -v htpasswd >/dev/null && command -v curl >/dev/null
}
if ! tools_present; then
  bash "$HERE/install-deps.sh" >&2 || true
fi
if ! tools_present; then
  if [[ "${CI:-}" == "true" ]]; then
    fail "tools" "prometheus, promtool, htpasswd or curl is missing (CI=true: not a skip)"
    finish
  fi
  echo "SKIP: prometheus, promtool, htpasswd or curl is missing"
  exit 0
fi
if [[ ! -x "$BIN" ]]; then
  fail "binary" "no binary at $BIN (cargo build --release)"
  finish
fi

TMP=$(mktemp -d /tmp/bpf-registry-prometheus.XXXXXX)
SERVER_PID=""
PROM_PID=""
cleanup() {
  for pid in "$PROM_PID" "$SERVER_PID"; do
    if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- the registry -------------------------------------------------------------
TOKEN="prometheus-scrape-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
USER_NAME="pusher"
USER_PW="pusher-Pa55word"
htpasswd -Bbc "$TMP/htpasswd" "$USER_NAME" "$USER_PW" >/dev/null 2>&1
PORT=$(free_port)
URL="http://127.0.0.1:$PORT"
BPF_REGISTRY_HTTP_ADDR="127.0.0.1:$PORT" BPF_REGISTRY_DATA_DIR="$TMP/data" \
  BPF_REGISTRY_LOG_LEVEL=WARN BPF_REGISTRY_AUTH_HTPASSWD="$TMP/htpasswd" \
  BPF_REGISTRY_METRICS_TOKEN="$TOKEN" \
  "$BIN" >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  curl -fsS "$URL/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
if curl -fsS "$URL/healthz" >/dev/null 2>&1; then
  pass "registry started"
else
  fail "registry started" "$(tail -n 5 "$TMP/server.log" | tr '\n' ' ')"
  finish
fi

# --- Prometheus ------------------------------------------------------------------
PPORT=$(free_port)
PROM="http://127.0.0.1:$PPORT"
printf '%s' "$TOKEN" >"$TMP/token"
cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: bpf-registry
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: $TMP/token
    static_configs:
      - targets: ["127.0.0.1:$PORT"]
EOF
if promtool check config "$TMP/prometheus.yml" >"$TMP/promtool-config.log" 2>&1; then
  pass "promtool check config"
else
  fail "promtool check config" "$(tail -n 3 "$TMP/promtool-config.log" | tr '\n' ' ')"
fi
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
  --web.listen-address="127.0.0.1:$PPORT" --log.level=warn >"$TMP/prometheus.log" 2>&1 &
PROM_PID=$!
ready=0
for _ in $(seq 1 $((WAIT_SECS * 10))); do
  if curl -fsS "$PROM/-/ready" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$PROM_PID" 2>/dev/null || break
  sleep 0.1
done
if ((ready)); then
  pass "prometheus started"
else
  fail "prometheus started" "$(tail -n 5 "$TMP/prometheus.log" | tr '\n' ' ')"
  finish
fi

# --- traffic ---------------------------------------------------------------------
REPO="metrics-probe/secret-repo-name"
CURL=(curl -fsS -u "$USER_NAME:$USER_PW")
sha() { printf 'sha256:%s' "$(sha256sum "$1" | cut -d' ' -f1)"; }
traffic() {
  head -c 50000 /dev/urandom >"$TMP/layer"
  printf '{}' >"$TMP/config"
  local layer config manifest
  layer=$(sha "$TMP/layer")
  config=$(sha "$TMP/config")
  "${CURL[@]}" -X POST -H 'Content-Type: application/octet-stream' --data-binary "@$TMP/layer" \
    "$URL/v2/$REPO/blobs/uploads/?digest=$layer" -o /dev/null || return 1
  "${CURL[@]}" -X POST -H 'Content-Type: application/octet-stream' --data-binary "@$TMP/config" \
    "$URL/v2/$REPO/blobs/uploads/?digest=$config" -o /dev/null || return 1
  cat >"$TMP/manifest" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"$config","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$layer","size":50000}]}
EOF
  manifest=$(sha "$TMP/manifest")
  echo "$layer $config $manifest" >"$TMP/digests"
  "${CURL[@]}" -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$TMP/manifest" "$URL/v2/$REPO/manifests/secret-tag" -o /dev/null || return 1
  for path in "manifests/secret-tag" "manifests/$manifest" "blobs/$layer" "tags/list"; do
    "${CURL[@]}" -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$URL/v2/$REPO/$path" -o /dev/null || return 1
  done
  local id
  id=$("${CURL[@]}" -X POST -H 'Content-Type: application/json' "$URL/artifacts" -d \
    '{"name":"metrics-probe/secret-artifact","version":"1.0.0","description":"d","type":"program","architecture":"x86_64","kernel_version":"5.15.0","data":"dGVzdCBkYXRh"}' \
    | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["id"])') || return 1
  echo "$id" >>"$TMP/digests"
  "${CURL[@]}" "$URL/artifacts" -o /dev/null || return 1
  "${CURL[@]}" "$URL/artifacts/$id/binary" -o /dev/null || return 1
}
if traffic 2>"$TMP/traffic.log"; then
  pass "traffic through /v2 and REST"
else
  fail "traffic through /v2 and REST" "$(tail -n 3 "$TMP/traffic.log" | tr '\n' ' ')"
fi

# --- what Prometheus scraped ------------------------------------------------------
EXPECTED=(
  "POST /v2/{name}/blobs/uploads/ 201"
  "PUT /v2/{name}/manifests/{reference} 201"
  "GET /v2/{name}/manifests/{reference} 200"
  "GET /v2/{name}/blobs/{digest} 200"
  "GET /v2/{name}/tags/list 200"
  "POST /artifacts 201"
  "GET /artifacts 200"
  "GET /artifacts/{id}/binary 200"
  "GET /healthz 200"
  "GET /metrics 200"
)
# The checker of a query answer: prints what is missing (or a label that
# holds a name or a digest), nothing when all is there.
cat >"$TMP/check_answer.py" <<'EOF'
import json, sys
answer = json.load(open(sys.argv[1]))
secrets = open(sys.argv[2]).read().split() + ["secret-repo-name", "secret-tag", "secret-artifact", "pusher"]
secrets += [s.split(":", 1)[1] for s in secrets if ":" in s]
want = sys.argv[3:]
have = set()
results = answer.get("data", {}).get("result", [])
if not results:
    print("no series at all")
for r in results:
    m = r["metric"]
    have.add(f'{m.get("method")} {m.get("route")} {m.get("status")}')
    for k, v in m.items():
        for s in secrets:
            if s and s in v:
                print(f"label {k}={v!r} holds {s!r}")
for w in want:
    if w not in have:
        print(f"no series for {w!r}")
EOF
# The value of a PromQL query's first series ("" when it has none).
query_value() {
  curl -fsS -G "$PROM/api/v1/query" --data-urlencode "query=$1" -o "$TMP/query.json" || return 1
  "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))["data"]["result"]; print(r[0]["value"][1] if r else "")' "$TMP/query.json"
}
QUERY="$PROM/api/v1/query?query=http_server_request_duration_seconds_count"
missing="no answer"
for _ in $(seq 1 $((WAIT_SECS * 2))); do
  if curl -fsS "$QUERY" -o "$TMP/answer.json" 2>/dev/null; then
    missing=$("$PY" "$TMP/check_answer.py" "$TMP/answer.json" "$TMP/digests" "${EXPECTED[@]}" 2>&1)
    [[ -z "$missing" ]] && break
  fi
  sleep 0.5
done
if [[ -z "$missing" ]]; then
  pass "prometheus has the request histogram by route template"
else
  fail "prometheus has the request histogram by route template" "$(tr '\n' ';' <<<"$missing")"
fi
up=$(query_value 'up{job="bpf-registry"}' 2>&1)
if [[ "$up" == "1" ]]; then pass "scrape target is up"; else fail "scrape target is up" "up=$up"; fi
for q in 'registry_blob_bytes_total{direction="in"}' 'registry_artifacts' 'process_resident_memory_bytes'; do
  v=$(query_value "$q" 2>&1)
  if [[ -n "$v" ]] && "$PY" -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "$v" 2>/dev/null; then
    pass "prometheus has $q ($v)"
  else
    fail "prometheus has $q" "value '$v'"
  fi
done

# --- the exposition itself ---------------------------------------------------------
curl -fsS -H "Authorization: Bearer $TOKEN" "$URL/metrics" -o "$TMP/exposition.txt"
if promtool check metrics <"$TMP/exposition.txt" >"$TMP/promtool.log" 2>&1; then
  pass "promtool check metrics ($(grep -vc '^#' "$TMP/exposition.txt") samples)"
else
  fail "promtool check metrics" "$(head -n 5 "$TMP/promtool.log" | tr '\n' ' ')"
fi
code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/metrics")
if [[ "$code" == "401" ]]; then pass "no token: 401"; else fail "no token: 401" "got $code"; fi
if [[ -n "${PROMETHEUS_SAMPLE_OUT:-}" ]]; then cp "$TMP/exposition.txt" "$PROMETHEUS_SAMPLE_OUT"; fi

finish
