#!/usr/bin/env bash
# auth_interop.sh - authentication, authorization and TLS with real clients.
#
# Usage: conformance/auth_interop.sh [--bench] [path/to/bpf-registry]
#        (default binary: target/release/bpf-registry)
#
# Makes users with `htpasswd -B` (apache2-utils), a policy file, and a CA
# plus a server certificate for 127.0.0.1 with `openssl`, all in a temp dir
# (no key is committed). Starts two registries on free 127.0.0.1 ports, one
# plain HTTP and one HTTPS, both with authentication on, and stops them (by
# PID) on exit. Then:
#   a. oras-py (conformance/auth_interop.py): login, push, pull with the
#      token and the basic backends; refusals (pull-only user pushing,
#      wrong password, unknown user, anonymous); anonymous pull of a public
#      repository; over HTTP, then over TLS with the CA;
#   b. skopeo copy --src-creds/--dest-creds between repositories and into an
#      OCI layout; refusals (pull-only writer, wrong password, no creds);
#      the same over TLS with --src-cert-dir/--dest-cert-dir;
#   c. curl: the 401 challenge names the right realm (http and https);
#   d. the htpasswd file is re-read on SIGHUP (a user added, then usable);
#   e. no password or token appears in the server's log (DEBUG level).
# With --bench, also measures requests/s of a manifest GET with wrk (64
# connections, 10 s, 127.0.0.1): anonymous on a registry without auth,
# anonymous on a public repository, Basic, Bearer.
# Prints PASS/FAIL per step, then "N passed, N failed"; exits 1 on failure.
set -uo pipefail

BENCH=0
if [[ "${1:-}" == "--bench" ]]; then BENCH=1; shift; fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="${1:-$ROOT/target/release/bpf-registry}"
VENV="${BPF_VENV:-$HOME/.cache/bpf-registry-venv}"
PY="$VENV/bin/python"

if [[ ! -x "$BIN" ]]; then echo "FAIL: no binary at $BIN (cargo build --release)" >&2; exit 1; fi
if [[ ! -x "$PY" ]] || ! command -v skopeo >/dev/null || ! command -v htpasswd >/dev/null \
   || ! command -v openssl >/dev/null || { ((BENCH)) && ! command -v wrk >/dev/null; }; then
  bash "$HERE/install-deps.sh" || { echo "FAIL: install-deps.sh failed" >&2; exit 1; }
fi

PASSED=0
FAILED=0
pass() { echo "PASS $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1: $2"; FAILED=$((FAILED + 1)); }
check() { # check NAME CMD... : PASS when CMD succeeds
  local name="$1"; shift
  local out
  if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$(tail -n 3 <<<"$out" | tr '\n' ' ')"; fi
}
refuse() { # refuse NAME CMD... : PASS when CMD fails
  local name="$1"; shift
  if "$@" >/dev/null 2>&1; then fail "$name" "was accepted"; else pass "$name"; fi
}
relay() { # relay NAME RC OUTPUT: count a helper's PASS/FAIL lines
  local name="$1" rc="$2" out="$3" line n=0
  while IFS= read -r line; do
    case "$line" in
      PASS\ *) pass "${line#PASS }"; n=$((n + 1)) ;;
      FAIL\ *) rest="${line#FAIL }"; fail "${rest%%:*}" "${rest#*: }"; n=$((n + 1)) ;;
      *) [[ -n "$line" ]] && echo "  $line" ;;
    esac
  done <<<"$out"
  if ((n == 0 && rc != 0)); then fail "$name" "exit status $rc"; fi
}

TMP="$(mktemp -d /tmp/bpf-auth-interop.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do
    if kill -0 "$p" 2>/dev/null; then kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; fi
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- users, policy, certificates ----------------------------------------------
PW_ALICE="alice-$RANDOM-pw"; PW_BOB="bob-$RANDOM-pw"; PW_ADMIN="admin-$RANDOM-pw"
HT="$TMP/htpasswd"
htpasswd -cbB -C 5 "$HT" alice "$PW_ALICE" 2>/dev/null
htpasswd -bB -C 5 "$HT" bob "$PW_BOB" 2>/dev/null
htpasswd -bB -C 5 "$HT" admin "$PW_ADMIN" 2>/dev/null
htpasswd -bB -C 5 "$HT" carol "carol-$RANDOM-pw" 2>/dev/null
cat >"$TMP/policy.toml" <<'EOF'
[[grant]]
users = ["alice"]
repositories = ["bpf/**"]
actions = ["pull", "push", "delete"]

[[grant]]
users = ["bob"]
repositories = ["bpf/**"]
actions = ["pull"]

[[grant]]
users = ["admin"]
repositories = ["**"]
actions = ["*"]

[anonymous]
repositories = ["public/*"]
actions = ["pull"]
EOF
(
  cd "$TMP" || exit 1
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=bpf-registry interop CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca.pem
  openssl ecparam -name prime256v1 -genkey -noout -out server.key
  openssl req -new -key server.key -subj "/CN=127.0.0.1" -out server.csr
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >ext.cnf
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 \
    -extfile ext.cnf -out server.pem
  mkdir -p certs && cp ca.pem certs/ca.crt
) >"$TMP/openssl.log" 2>&1 || { echo "FAIL certificates: $(tail -n 3 "$TMP/openssl.log")"; exit 1; }

start() { # start NAME PORT [extra env...]: starts a registry, waits for /healthz
  local name="$1" port="$2"; shift 2
  mkdir -p "$TMP/$name"
  env BPF_REGISTRY_HTTP_ADDR="127.0.0.1:$port" BPF_REGISTRY_DATA_DIR="$TMP/$name/data" \
    BPF_REGISTRY_LOG_LEVEL=DEBUG "$@" "$BIN" >"$TMP/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$name=$!"
  for _ in $(seq 1 100); do
    curl -fsS --cacert "$TMP/ca.pem" "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
    curl -fsS --cacert "$TMP/ca.pem" "https://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "FAIL start $name: $(tail -n 5 "$TMP/$name.log")"
  return 1
}

AUTH_ENV=(BPF_REGISTRY_AUTH_HTPASSWD="$HT" BPF_REGISTRY_AUTH_POLICY="$TMP/policy.toml")
P1=$(free_port); P2=$(free_port)
start plain "$P1" "${AUTH_ENV[@]}" || exit 1
start tls "$P2" "${AUTH_ENV[@]}" BPF_REGISTRY_TLS_CERT="$TMP/server.pem" BPF_REGISTRY_TLS_KEY="$TMP/server.key" || exit 1
H1="127.0.0.1:$P1"; H2="127.0.0.1:$P2"

# --- a. oras-py -----------------------------------------------------------------
out=$("$PY" "$HERE/auth_interop.py" --registry "$H1" --insecure \
  --writer "alice:$PW_ALICE" --reader "bob:$PW_BOB" --admin "admin:$PW_ADMIN" 2>&1); rc=$?
relay "oras-py (http)" "$rc" "$out"
out=$("$PY" "$HERE/auth_interop.py" --registry "$H2" --ca "$TMP/ca.pem" --prefix tls \
  --writer "alice:$PW_ALICE" --reader "bob:$PW_BOB" --admin "admin:$PW_ADMIN" 2>&1); rc=$?
relay "oras-py (tls)" "$rc" "$out"

# --- b. skopeo ------------------------------------------------------------------
SK_HTTP=(--src-tls-verify=false --dest-tls-verify=false)
SK_TLS=(--src-cert-dir "$TMP/certs" --dest-cert-dir "$TMP/certs")
digest_of() { # digest_of HOST REPO:TAG CREDS [skopeo flags]
  local host="$1" ref="$2" creds="$3"; shift 3
  skopeo inspect --raw "$@" --creds "$creds" "docker://$host/$ref" | sha256sum | cut -d' ' -f1
}
for mode in http tls; do
  if [[ $mode == http ]]; then H=$H1; FLAGS=("${SK_HTTP[@]}"); IFLAGS=(--tls-verify=false); SRC=bpf/oras/prog:v1
  else H=$H2; FLAGS=("${SK_TLS[@]}"); IFLAGS=(--cert-dir "$TMP/certs"); SRC=bpf/tls-oras/prog:v1; fi
  check "skopeo ($mode) copy --src-creds reader --dest-creds writer" \
    skopeo copy --retry-times 0 "${FLAGS[@]}" --src-creds "bob:$PW_BOB" --dest-creds "alice:$PW_ALICE" \
      "docker://$H/$SRC" "docker://$H/bpf/skopeo/copy:v1"
  a=$(digest_of "$H" "$SRC" "bob:$PW_BOB" "${IFLAGS[@]}" 2>/dev/null)
  b=$(digest_of "$H" bpf/skopeo/copy:v1 "bob:$PW_BOB" "${IFLAGS[@]}" 2>/dev/null)
  if [[ -n "$a" && "$a" == "$b" ]]; then pass "skopeo ($mode) copy keeps the manifest digest"; else fail "skopeo ($mode) copy keeps the manifest digest" "$a vs $b"; fi
  rm -rf "$TMP/layout-$mode"
  check "skopeo ($mode) copy into an OCI layout with --src-creds" \
    skopeo copy --retry-times 0 "${FLAGS[@]}" --src-creds "bob:$PW_BOB" "docker://$H/$SRC" "oci:$TMP/layout-$mode:v1"
  refuse "skopeo ($mode) pull-only user as --dest-creds is refused" \
    skopeo copy --retry-times 0 "${FLAGS[@]}" --dest-creds "bob:$PW_BOB" "oci:$TMP/layout-$mode:v1" "docker://$H/bpf/skopeo/denied:v1"
  refuse "skopeo ($mode) wrong password is refused" \
    skopeo copy --retry-times 0 "${FLAGS[@]}" --src-creds "bob:wrong" "docker://$H/$SRC" "oci:$TMP/layout-$mode-2:v1"
  refuse "skopeo ($mode) no credentials on a private repo is refused" \
    skopeo copy --retry-times 0 "${FLAGS[@]}" "docker://$H/$SRC" "oci:$TMP/layout-$mode-3:v1"
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$TMP/ca.pem" -u "admin:$PW_ADMIN" \
    "$([[ $mode == http ]] && echo http || echo https)://$H/v2/bpf/skopeo/denied/manifests/v1")
  if [[ "$code" == 404 ]]; then pass "skopeo ($mode) refused copy left nothing"; else fail "skopeo ($mode) refused copy left nothing" "GET answered $code"; fi
done

# --- c. challenges --------------------------------------------------------------
hdr=$(curl -s -D - -o /dev/null "http://$H1/v2/" | tr -d '\r' | grep -i '^www-authenticate:')
if [[ "$hdr" == *"Bearer realm=\"http://$H1/token\",service=\"bpf-registry\""* ]]; then pass "challenge realm (http)"; else fail "challenge realm (http)" "$hdr"; fi
hdr=$(curl -s -D - -o /dev/null --cacert "$TMP/ca.pem" "https://$H2/v2/" | tr -d '\r' | grep -i '^www-authenticate:')
if [[ "$hdr" == *"Bearer realm=\"https://$H2/token\""* ]]; then pass "challenge realm (https)"; else fail "challenge realm (https)" "$hdr"; fi
refuse "plain http to the TLS port gets no answer" curl -fsS --max-time 5 "http://$H2/healthz"

# --- d. SIGHUP reloads the user file ----------------------------------------------
PW_ERIN="erin-$RANDOM-pw"
code=$(curl -s -o /dev/null -w '%{http_code}' -u "erin:$PW_ERIN" "http://$H1/v2/")
htpasswd -bB -C 5 "$HT" erin "$PW_ERIN" 2>/dev/null
kill -HUP "$PID_plain"
ok=0
for _ in 1 2 3; do
  sleep 0.5
  if [[ $(curl -s -o /dev/null -w '%{http_code}' -u "erin:$PW_ERIN" "http://$H1/v2/") == 200 ]]; then ok=1; break; fi
done
if [[ $code == 401 && $ok == 1 ]]; then pass "htpasswd re-read on SIGHUP"; else fail "htpasswd re-read on SIGHUP" "before $code, after ok=$ok"; fi
grep -q "SIGHUP" "$TMP/plain.log" && pass "SIGHUP logged" || fail "SIGHUP logged" "no line in the log"

# --- e. no secret in the logs -------------------------------------------------------
TOKEN=$(curl -s -u "alice:$PW_ALICE" "http://$H1/token?service=bpf-registry&scope=repository:bpf/x:pull" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" "http://$H1/v2/bpf/x/tags/list"
curl -s -o /dev/null -u "alice:not-$PW_ALICE" "http://$H1/v2/"
leaks=""
for secret in "$PW_ALICE" "$PW_BOB" "$PW_ADMIN" "$PW_ERIN" "$TOKEN" "\$2y\$05"; do
  for log in "$TMP/plain.log" "$TMP/tls.log"; do
    grep -qF -- "$secret" "$log" && leaks+=" ${secret:0:12}...@$(basename "$log")"
  done
done
lines=$(cat "$TMP/plain.log" "$TMP/tls.log" | wc -l)
if [[ -z "$leaks" && $lines -gt 20 ]]; then pass "no password, hash or token in $lines log lines"; else fail "no secret in the logs" "found:$leaks (lines: $lines)"; fi
grep -q "authentication is on but TLS is off" "$TMP/plain.log" && pass "warning when auth is on without TLS" || fail "warning when auth is on without TLS" "not in the log"
grep -q "authentication is on but TLS is off" "$TMP/tls.log" && fail "no TLS warning with TLS" "warned" || pass "no TLS warning with TLS"

# --- benchmark ------------------------------------------------------------------
if ((BENCH)); then
  P3=$(free_port)
  start open "$P3" || exit 1
  H3="127.0.0.1:$P3"
  for h in "$H1" "$H3"; do
    printf 'bench-layer' >"$TMP/layer.bin"
  done
  # One small artifact in a public and a private repository (admin), and on
  # the open server.
  push_small() { # push_small HOST REPO AUTH...
    local host="$1" repo="$2"; shift 2
    local ld cd m
    ld="sha256:$(sha256sum "$TMP/layer.bin" | cut -d' ' -f1)"
    printf '{}' >"$TMP/cfg.json"; cd="sha256:$(sha256sum "$TMP/cfg.json" | cut -d' ' -f1)"
    curl -fsS "$@" -X POST --data-binary @"$TMP/cfg.json" "http://$host/v2/$repo/blobs/uploads/?digest=$cd" >/dev/null
    curl -fsS "$@" -X POST --data-binary @"$TMP/layer.bin" "http://$host/v2/$repo/blobs/uploads/?digest=$ld" >/dev/null
    m="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.empty.v1+json\",\"digest\":\"$cd\",\"size\":2},\"layers\":[{\"mediaType\":\"application/octet-stream\",\"digest\":\"$ld\",\"size\":11}]}"
    curl -fsS "$@" -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data "$m" "http://$host/v2/$repo/manifests/v1" >/dev/null
  }
  push_small "$H1" public/bench -u "admin:$PW_ADMIN"
  push_small "$H1" bpf/bench -u "admin:$PW_ADMIN"
  push_small "$H3" bpf/bench
  BT=$(curl -s -u "bob:$PW_BOB" "http://$H1/token?service=bpf-registry&scope=repository:bpf/bench:pull" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  BASIC=$(printf 'bob:%s' "$PW_BOB" | base64 -w0)
  ACCEPT='Accept: application/vnd.oci.image.manifest.v1+json'
  bench() { # bench NAME URL [header]
    local name="$1" url="$2"; shift 2
    local rps code
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "$ACCEPT" "$@" "$url")
    rps=$(wrk -t2 -c64 -d10s -H "$ACCEPT" "$@" "$url" | awk '/Requests\/sec/ {print $2}')
    echo "BENCH $name: $rps requests/s (status $code)"
  }
  echo "benchmark: GET manifest, wrk -t2 -c64 -d10s, 127.0.0.1"
  bench "anonymous, auth off" "http://$H3/v2/bpf/bench/manifests/v1"
  bench "anonymous, public repo, auth on" "http://$H1/v2/public/bench/manifests/v1"
  bench "Basic (cached bcrypt), auth on" "http://$H1/v2/bpf/bench/manifests/v1" -H "Authorization: Basic $BASIC"
  bench "Bearer ES256 token, auth on" "http://$H1/v2/bpf/bench/manifests/v1" -H "Authorization: Bearer $BT"
fi

echo
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
