#!/usr/bin/env bash
# interop.sh - drive real OCI clients against a running bpf-registry.
#
# Usage: conformance/interop.sh http://127.0.0.1:PORT_OF_BPF_REGISTRY
#
# Starts its own CNCF distribution 2.8.x (`docker-registry serve`, Debian
# package docker-registry) on a free 127.0.0.1 port with filesystem storage in
# a temp dir, and stops it (by PID) on exit. Then:
#   a. oras-py round trip (conformance/oras_roundtrip.py): push an artifact with
#      a custom artifactType + annotations, pull it back, compare bytes/fields;
#   b. skopeo copy --all of a hand-built image and image index from bpf-registry
#      into distribution and back into bpf-registry under another repo; the
#      manifest digests must not change;
#   c. referrers: attach an SBOM referrer to the oras artifact and query
#      /v2/<repo>/referrers/<digest> with and without ?artifactType=.
# Prints PASS/FAIL per step, then "N passed, N failed"; exits 1 on any failure.
# Needs conformance/install-deps.sh to have run (it is run here if things are missing).
set -uo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 http://127.0.0.1:PORT" >&2
  exit 2
fi

BPF_URL="${1%/}"
BPF_HOST="${BPF_URL#*://}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${BPF_VENV:-$HOME/.cache/bpf-registry-venv}"
PY="$VENV/bin/python"

if [[ ! -x "$PY" ]] || ! command -v skopeo >/dev/null || ! command -v docker-registry >/dev/null; then
  bash "$HERE/install-deps.sh" || { echo "FAIL: install-deps.sh failed" >&2; exit 1; }
fi

PASSED=0
FAILED=0
pass() { echo "PASS $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1: $2"; FAILED=$((FAILED + 1)); }

# Record the PASS/FAIL lines a helper printed; a helper that failed without
# printing any counts as one failure named $1.
relay() {
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

# --- temp dir, distribution ----------------------------------------------------
TMP="$(mktemp -d /tmp/bpf-interop.XXXXXX)"
DIST_PID=""
cleanup() {
  if [[ -n "$DIST_PID" ]] && kill -0 "$DIST_PID" 2>/dev/null; then
    kill "$DIST_PID" 2>/dev/null
    wait "$DIST_PID" 2>/dev/null
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

DIST_PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
DIST_HOST="127.0.0.1:$DIST_PORT"
mkdir -p "$TMP/dist-data"
cat >"$TMP/dist-config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $TMP/dist-data
  delete:
    enabled: true
http:
  addr: $DIST_HOST
EOF
docker-registry serve "$TMP/dist-config.yml" >"$TMP/dist.log" 2>&1 &
DIST_PID=$!

ready() { curl -fsS -o /dev/null "$1/v2/" 2>/dev/null; }
for _ in $(seq 1 100); do
  ready "http://$DIST_HOST" && break
  kill -0 "$DIST_PID" 2>/dev/null || break
  sleep 0.1
done
if ready "http://$DIST_HOST"; then
  pass "distribution_started"
else
  fail "distribution_started" "docker-registry did not answer on $DIST_HOST: $(tail -3 "$TMP/dist.log")"
fi
if ready "$BPF_URL"; then
  pass "bpf_registry_reachable"
else
  fail "bpf_registry_reachable" "GET $BPF_URL/v2/ failed"
fi

cat >"$TMP/policy.json" <<'EOF'
{"default": [{"type": "insecureAcceptAnything"}]}
EOF
SKOPEO=(skopeo --policy "$TMP/policy.json")
SUFFIX="$(date +%s)-$$"

# Manifest digest of docker://HOST/REPO:TAG, from the raw bytes skopeo fetches.
raw_digest() {
  "${SKOPEO[@]}" inspect --raw --tls-verify=false "docker://$1" 2>"$TMP/inspect.err" |
    sha256sum | awk '{print "sha256:" $1}'
}
# Docker-Content-Digest header of a manifest HEAD.
header_digest() {
  curl -fsS -I -H "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json" \
    "http://$1/v2/$2/manifests/$3" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}'
}

# --- a. oras-py round trip ------------------------------------------------------
echo "== a. oras-py round trip"
ORAS_REPO="interop/bpf-artifact-$SUFFIX"
out="$("$PY" "$HERE/oras_roundtrip.py" --registry "$BPF_HOST" --repo "$ORAS_REPO" \
  --tag v1 --digest-out "$TMP/oras.digest" 2>"$TMP/oras.err")"
rc=$?
relay "oras_roundtrip" "$rc" "$out"
((rc != 0)) && sed 's/^/  stderr: /' "$TMP/oras.err" | tail -5

# --- b. skopeo copy bpf-registry -> distribution -> bpf-registry ---------------
echo "== b. skopeo copy --all"
IMG_REPO="interop/image-$SUFFIX"
BACK_REPO="interop/image-back-$SUFFIX"
if digests="$("$PY" "$HERE/interop_helpers.py" push-image --url "$BPF_URL" --repo "$IMG_REPO" 2>"$TMP/push.err")"; then
  pass "push_test_image_and_index"
  for tag in single multi; do
    want="$(printf '%s' "$digests" | "$PY" -c "import json,sys; print(json.load(sys.stdin)['$tag'])")"
    if ! "${SKOPEO[@]}" copy --all --src-tls-verify=false --dest-tls-verify=false \
        "docker://$BPF_HOST/$IMG_REPO:$tag" "docker://$DIST_HOST/$IMG_REPO:$tag" >"$TMP/copy1.log" 2>&1; then
      fail "skopeo_copy_${tag}_to_distribution" "$(tail -2 "$TMP/copy1.log" | tr '\n' ' ')"
      continue
    fi
    got="$(raw_digest "$DIST_HOST/$IMG_REPO:$tag")"
    if [[ "$got" == "$want" ]]; then
      pass "skopeo_copy_${tag}_to_distribution"
    else
      fail "skopeo_copy_${tag}_to_distribution" "digest at distribution $got, pushed $want"
    fi
    if ! "${SKOPEO[@]}" copy --all --src-tls-verify=false --dest-tls-verify=false \
        "docker://$DIST_HOST/$IMG_REPO:$tag" "docker://$BPF_HOST/$BACK_REPO:$tag" >"$TMP/copy2.log" 2>&1; then
      fail "skopeo_copy_${tag}_back_to_bpf_registry" "$(tail -2 "$TMP/copy2.log" | tr '\n' ' ')"
      continue
    fi
    got_raw="$(raw_digest "$BPF_HOST/$BACK_REPO:$tag")"
    got_hdr="$(header_digest "$BPF_HOST" "$BACK_REPO" "$tag")"
    if [[ "$got_raw" == "$want" && "$got_hdr" == "$want" ]]; then
      pass "skopeo_copy_${tag}_back_to_bpf_registry"
    else
      fail "skopeo_copy_${tag}_back_to_bpf_registry" \
        "raw digest $got_raw, Docker-Content-Digest ${got_hdr:-none}, pushed $want"
    fi
  done
  # every platform manifest of the index must have made the round trip too
  if "${SKOPEO[@]}" inspect --raw --tls-verify=false "docker://$BPF_HOST/$BACK_REPO:multi" \
      >"$TMP/index.json" 2>/dev/null; then
    missing=""
    for d in $("$PY" -c 'import json,sys; print(" ".join(m["digest"] for m in json.load(open(sys.argv[1]))["manifests"]))' "$TMP/index.json"); do
      got="$(raw_digest "$BPF_HOST/$BACK_REPO@$d")"
      [[ "$got" == "$d" ]] || missing="$missing $d"
    done
    if [[ -z "$missing" ]]; then
      pass "skopeo_index_children_round_trip"
    else
      fail "skopeo_index_children_round_trip" "missing or changed:$missing"
    fi
  else
    fail "skopeo_index_children_round_trip" "cannot read $BACK_REPO:multi"
  fi
else
  fail "push_test_image_and_index" "$(tail -2 "$TMP/push.err" | tr '\n' ' ')"
fi

# --- c. referrers ----------------------------------------------------------------
echo "== c. referrers"
if [[ -s "$TMP/oras.digest" ]]; then
  out="$("$PY" "$HERE/interop_helpers.py" referrers --url "$BPF_URL" --repo "$ORAS_REPO" \
    --subject "$(cat "$TMP/oras.digest")" 2>"$TMP/ref.err")"
  rc=$?
  relay "referrers" "$rc" "$out"
else
  fail "referrers" "no artifact digest from step a"
fi

echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
