#!/usr/bin/env bash
# garage.sh - install and run Garage (S3-compatible object store) on loopback
# for the S3 blob-store tests.
#
# Usage:
#   conformance/garage.sh install           build Garage 2.5.0 once into the cache
#   conformance/garage.sh start1 DIR        one node, replication factor 1
#   conformance/garage.sh start3 DIR        three nodes, replication factor 3
#   conformance/garage.sh kill DIR N        kill -9 node N of DIR (a crash, for the fault test)
#   conformance/garage.sh restart DIR N     start node N of DIR again (after a kill -9)
#   conformance/garage.sh wait-healthy DIR  wait until every node has seen every node healthy for
#                                           3 s (after a restart: a few seconds)
#   conformance/garage.sh stop DIR          stop the nodes this script started in DIR
#
# start1/start3 print `export` lines (also kept in DIR/env) for
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
#   BPF_TEST_S3_URL=s3://bpf-registry?endpoint=http://127.0.0.1:<s3 port>&region=garage
#   GARAGE_NODES=<n>, and per node i: GARAGE_NODE<i>_PID, _RPC_PORT, _S3_PORT.
# Every port is a free 127.0.0.1 port; every node's S3 endpoint serves the
# whole cluster (BPF_TEST_S3_URL names node 1's). The bucket `bpf-registry`
# and a read/write key for it are created. DIR/pids lists the PIDs; `stop`
# kills only those (checking each is still a garage process).
#
# The cache is $GARAGE_CACHE (default ~/.cache/bpf-registry-garage); the
# binary is $GARAGE_CACHE/bin/garage. Building it takes ~15-20 min on 2 cores.
set -euo pipefail

GARAGE_VERSION="2.5.0"
CACHE="${GARAGE_CACHE:-$HOME/.cache/bpf-registry-garage}"
GARAGE="$CACHE/bin/garage"
BUCKET="bpf-registry"
REGION="garage"

die() { echo "garage.sh: $*" >&2; exit 1; }

garage_works() {
  [[ -x "$GARAGE" ]] && "$GARAGE" --version 2>/dev/null | grep -q "$GARAGE_VERSION"
}

cmd_install() {
  if garage_works; then
    return 0
  fi
  command -v cargo >/dev/null || die "cargo not found"
  mkdir -p "$CACHE"
  # One build at a time: a second caller waits for the first one's lock.
  exec 9>"$CACHE/.install.lock"
  flock 9
  if garage_works; then
    return 0
  fi
  echo "garage.sh: building garage $GARAGE_VERSION into $CACHE (about 20 min on 2 cores)" >&2
  cargo install --locked garage --version "$GARAGE_VERSION" --root "$CACHE" >&2
  garage_works || die "garage was built but does not run"
}

# N free loopback TCP ports, one a line (bound to port 0, then released).
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
EOF
}

hex() { openssl rand -hex "$1"; }

g() { # g NODE ARGS... : the garage CLI against node NODE of $DIR
  local n="$1"; shift
  "$GARAGE" -c "$DIR/node$n/garage.toml" "$@"
}

write_config() { # NODE RF RPC S3 SECRET
  local n="$1" rf="$2" rpc="$3" s3="$4" secret="$5" d="$DIR/node$1"
  mkdir -p "$d/meta" "$d/data"
  cat >"$d/garage.toml" <<EOF
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "lmdb"
replication_factor = $rf
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
EOF
  chmod 600 "$d/garage.toml"
  echo "$rpc" >"$d/rpc_port"
  echo "$s3" >"$d/s3_port"
}

# Starts node N's daemon in the background; records its PID.
launch() {
  local n="$1" d="$DIR/node$1"
  RUST_LOG="${GARAGE_LOG:-garage=warn}" nohup "$GARAGE" -c "$d/garage.toml" server \
    >>"$d/log" 2>&1 </dev/null &
  echo $! >"$d/pid"
  # The list of every PID this DIR ever started, for `stop`.
  echo $! >>"$DIR/pids"
}

wait_until() { # SECONDS DESCRIPTION COMMAND...
  local secs="$1" what="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out waiting for $what (logs: $DIR/node*/log)"
    sleep 0.2
  done
}

s3_answers() { # any HTTP status from the S3 port means it serves
  local code
  code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/" || true)"
  [[ "$code" != "000" ]]
}

cluster_healthy() { # every node of the layout is up (replication needs them all)
  local n="$1"
  g 1 status 2>/dev/null | grep -q "HEALTHY NODES" || return 1
  local up
  up="$(g 1 status 2>/dev/null | sed -n '/HEALTHY NODES/,/^$/p' | grep -c '127.0.0.1:' || true)"
  ((up >= n))
}

cluster_connected() { # every node sees every node healthy, none failed
  local n="$1" i out up
  for ((i = 1; i <= n; i++)); do
    out="$(g "$i" status 2>/dev/null)" || return 1
    ! grep -q "FAILED NODES" <<<"$out" || return 1
    up="$(sed -n '/HEALTHY NODES/,/^$/p' <<<"$out" | grep -c '127\.0\.0\.1:' || true)"
    ((up >= n)) || return 1
  done
}

cluster_recovered() { # connected for 3 s in a row: a restarted node's peers
  # flap (FAILED, healthy, FAILED) for a few seconds while their old
  # connections to it time out.
  local n="$1" k
  for k in 1 2 3; do
    cluster_connected "$n" || return 1
    ((k == 3)) || sleep 1
  done
}

bucket_ready() {
  g 1 bucket info "$BUCKET"
}

cmd_start() { # NODES RF
  local nodes="$1" rf="$2"
  garage_works || die "garage is not installed: run '$0 install' first"
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  [[ ! -s "$DIR/pids" ]] || die "$DIR already has a cluster (run '$0 stop $DIR' first)"
  local secret ports i
  secret="$(hex 32)"
  mapfile -t ports < <(free_ports $((nodes * 2)))
  for ((i = 1; i <= nodes; i++)); do
    write_config "$i" "$rf" "${ports[$((2 * i - 2))]}" "${ports[$((2 * i - 1))]}" "$secret"
    launch "$i"
  done
  for ((i = 1; i <= nodes; i++)); do
    wait_until 60 "node $i" g "$i" node id -q
  done
  # Connect the other nodes to node 1, then give every node a role.
  local ids=()
  for ((i = 1; i <= nodes; i++)); do
    ids+=("$(g "$i" node id -q 2>/dev/null)")
  done
  for ((i = 2; i <= nodes; i++)); do
    wait_until 30 "node $i to connect" g 1 node connect "${ids[$((i - 1))]}"
  done
  wait_until 60 "all $nodes nodes to see each other" cluster_healthy "$nodes"
  for ((i = 1; i <= nodes; i++)); do
    g 1 layout assign -z dc1 -c 1G "${ids[$((i - 1))]%@*}" >/dev/null
  done
  g 1 layout apply --version 1 >/dev/null
  local key_id secret_key
  key_id="GK$(hex 12)"
  secret_key="$(hex 32)"
  wait_until 60 "the layout to apply" g 1 bucket create "$BUCKET"
  g 1 key import --yes -n "$BUCKET" "$key_id" "$secret_key" >/dev/null
  g 1 bucket allow --read --write --owner "$BUCKET" --key "$key_id" >/dev/null
  wait_until 30 "the bucket" bucket_ready
  for ((i = 1; i <= nodes; i++)); do
    wait_until 30 "node $i's S3 port" s3_answers "$(cat "$DIR/node$i/s3_port")"
  done
  {
    echo "export AWS_ACCESS_KEY_ID=$key_id"
    echo "export AWS_SECRET_ACCESS_KEY=$secret_key"
    echo "export BPF_TEST_S3_URL='s3://$BUCKET?endpoint=http://127.0.0.1:$(cat "$DIR/node1/s3_port")&region=$REGION'"
    echo "export GARAGE_NODES=$nodes"
    for ((i = 1; i <= nodes; i++)); do
      echo "export GARAGE_NODE${i}_PID=$(cat "$DIR/node$i/pid")"
      echo "export GARAGE_NODE${i}_RPC_PORT=$(cat "$DIR/node$i/rpc_port")"
      echo "export GARAGE_NODE${i}_S3_PORT=$(cat "$DIR/node$i/s3_port")"
    done
  } >"$DIR/env"
  cat "$DIR/env"
}

# Whether PID is alive and is a garage process (not a reused PID).
is_ours() {
  local pid="$1"
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$GARAGE -c $DIR/"
}

node_count() { # the nodes DIR was started with
  local dirs=("$DIR"/node*/garage.toml)
  echo "${#dirs[@]}"
}

cmd_kill() { # NODE: SIGKILL, no shutdown (what the fault test needs)
  local n="$1" pid
  [[ -f "$DIR/node$n/garage.toml" ]] || die "no node $n in $DIR"
  pid="$(cat "$DIR/node$n/pid" 2>/dev/null || true)"
  [[ -n "$pid" ]] && is_ours "$pid" || die "node $n is not running"
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
}

cmd_restart() { # NODE
  local n="$1"
  [[ -f "$DIR/node$n/garage.toml" ]] || die "no node $n in $DIR"
  local old
  old="$(cat "$DIR/node$n/pid" 2>/dev/null || true)"
  if [[ -n "$old" ]] && is_ours "$old"; then
    die "node $n (PID $old) is still running"
  fi
  launch "$n"
  wait_until 60 "node $n" s3_answers "$(cat "$DIR/node$n/s3_port")"
  sed -i "s/^export GARAGE_NODE${n}_PID=.*/export GARAGE_NODE${n}_PID=$(cat "$DIR/node$n/pid")/" "$DIR/env"
  echo "export GARAGE_NODE${n}_PID=$(cat "$DIR/node$n/pid")"
}

cmd_wait_healthy() {
  # Every node back in the cluster, not just listening: a second node
  # killed before the first rejoined would leave one of three, below quorum.
  wait_until 60 "every node of $DIR to be healthy" cluster_recovered "$(node_count)"
}

cmd_stop() {
  [[ -f "$DIR/pids" ]] || return 0
  local pid
  while read -r pid; do
    if [[ -n "$pid" ]] && is_ours "$pid"; then
      kill "$pid" 2>/dev/null || true
    fi
  done <"$DIR/pids"
  local deadline=$((SECONDS + 10))
  while read -r pid; do
    while [[ -n "$pid" ]] && is_ours "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if [[ -n "$pid" ]] && is_ours "$pid"; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  done <"$DIR/pids"
  rm -f "$DIR/pids"
}

case "${1:-}" in
  install) cmd_install ;;
  start1) DIR="${2:?usage: $0 start1 DIR}"; cmd_start 1 1 ;;
  start3) DIR="${2:?usage: $0 start3 DIR}"; cmd_start 3 3 ;;
  kill)
    DIR="$(cd "${2:?usage: $0 kill DIR N}" && pwd)"
    cmd_kill "${3:?usage: $0 kill DIR N}"
    ;;
  wait-healthy) DIR="$(cd "${2:?usage: $0 wait-healthy DIR}" && pwd)"; cmd_wait_healthy ;;
  restart)
    DIR="$(cd "${2:?usage: $0 restart DIR N}" && pwd)"
    cmd_restart "${3:?usage: $0 restart DIR N}"
    ;;
  stop) DIR="$(cd "${2:?usage: $0 stop DIR}" && pwd)"; cmd_stop ;;
  *)
    sed -n '2,25p' "$0" >&2
    exit 2
    ;;
esac
