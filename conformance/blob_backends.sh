#!/usr/bin/env bash
# blob_backends.sh - run the backend test suite (tests/blob_backends.rs)
# against the filesystem and against a single-node Garage started here.
#
# Usage: conformance/blob_backends.sh [extra cargo test args]
#
# Installs Garage if it is not cached yet (conformance/garage.sh install),
# starts one node in a temp dir, runs `cargo test --test blob_backends` with
# BPF_TEST_S3_URL and the AWS_* key exported, and stops the node (by PID)
# and removes the temp dir on exit, whatever happened.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
GARAGE_SH="$HERE/garage.sh"

bash "$GARAGE_SH" install

TMP="$(mktemp -d /tmp/bpf-blob-backends.XXXXXX)"
cleanup() {
  bash "$GARAGE_SH" stop "$TMP/garage" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

bash "$GARAGE_SH" start1 "$TMP/garage" >"$TMP/env"
# shellcheck disable=SC1091
source "$TMP/env"
echo "garage: $BPF_TEST_S3_URL (PID $GARAGE_NODE1_PID)"

cd "$ROOT"
cargo test --test blob_backends "$@"
