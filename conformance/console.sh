#!/usr/bin/env bash
# console.sh - the web console (/ui/) in a real headless Chromium.
#
# Usage: conformance/console.sh [path/to/bpf-registry]
#        (default binary: target/release/bpf-registry)
#
# Runs conformance/console_test.py: Playwright (PyPI, in the venv) drives
# Debian's `chromium` (executable_path, no browser download) against the
# binary on free 127.0.0.1 ports: the console lists the artifacts the test
# pushed, the filters and the search narrow the list, an artifact page shows
# its eBPF facts, signature, hosts and pull commands, the host and
# repository pages load, and with authentication on the console answers 401
# with a Basic challenge and loads with credentials; no console errors or
# page errors anywhere (a CSP violation is one).
# Screenshots go to target/console-screenshots/ (the test artifacts); with
# BPF_CONSOLE_DOCS=1 they are also copied to docs/console/ (checked in,
# linked from the README), so an ordinary run leaves the checkout as it was.
# Under CI=true a missing chromium or playwright is a failure; otherwise they
# are installed with conformance/install-deps.sh, and the run is skipped if
# that fails. Prints PASS/FAIL per check; exits 1 on failure.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="${1:-$ROOT/target/release/bpf-registry}"
VENV="${BPF_VENV:-$HOME/.cache/bpf-registry-venv}"
PY="$VENV/bin/python"
CHROMIUM="${BPF_CHROMIUM:-$(command -v chromium || echo /usr/bin/chromium)}"
SHOTS="$ROOT/target/console-screenshots"
DOCS="$ROOT/docs/console"

tools_present() {
  [[ -x "$CHROMIUM" ]] && [[ -x "$PY" ]] && "$PY" -c 'import playwright.sync_api, requests' 2>/dev/null \
    && command -v clang >/dev/null && command -v htpasswd >/dev/null && command -v openssl >/dev/null
}
if ! tools_present; then
  bash "$HERE/install-deps.sh" >&2 || true
  CHROMIUM="${BPF_CHROMIUM:-$(command -v chromium || echo /usr/bin/chromium)}"
fi
if ! tools_present; then
  if [[ "${CI:-}" == "true" ]]; then
    echo "FAIL tools: chromium, playwright (venv), clang, htpasswd or openssl is missing (CI=true: not a skip)"
    echo "0 passed, 1 failed"
    exit 1
  fi
  echo "SKIP: chromium, playwright (venv), clang, htpasswd or openssl is missing"
  exit 0
fi
if [[ ! -x "$BIN" ]]; then
  echo "FAIL binary: no binary at $BIN (cargo build --release)"
  echo "0 passed, 1 failed"
  exit 1
fi

rm -rf "$SHOTS"
mkdir -p "$SHOTS"
"$PY" "$HERE/console_test.py" --binary "$BIN" --chromium "$CHROMIUM" --screenshots "$SHOTS"
rc=$?
if ((rc == 0)); then
  if [[ "${BPF_CONSOLE_DOCS:-}" == 1 ]]; then
    mkdir -p "$DOCS"
    cp "$SHOTS"/*.png "$DOCS"/
    echo "screenshots: $SHOTS (copied to docs/console/)"
  else
    echo "screenshots: $SHOTS (BPF_CONSOLE_DOCS=1 copies them to docs/console/)"
  fi
fi
exit $rc
