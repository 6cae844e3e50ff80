"""The moving parts of the crash harness's replicas mode
(conformance/crash_harness.py --replicas N): the registry replicas, the
client-side load balancer over them, a TCP load balancer in front of the
Garage nodes' S3 ports, and the Garage nodes themselves.

  * `Replicas` runs N release binaries on one metadata database and one
    blob store, each with its own data dir and a fixed port (kept across
    restarts), and kills one with SIGKILL.
  * `BalancedSession` is a `requests.Session` whose every request goes to a
    random replica; a request that could not connect (refused: the
    replica is down) is retried on another one, as a load balancer does.
    A request cut off after it was sent is never retried: its outcome is
    unknown, like any client's. It counts the retries, the 5xx answers, and
    the upload requests in flight per replica (to kill one mid-push).
  * `TcpBalancer` forwards each accepted connection to a random Garage
    node that accepts it, so the replicas' one S3 endpoint survives the
    loss of a node (what the README asks of a deployment).
  * `GarageNodes` kills and restarts a node of a cluster started by
    `conformance/garage.sh start3 DIR`.

Only the standard library and `requests`.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time

import requests
import urllib3

# The base URL clients of a BalancedSession write; each request replaces it
# with a live replica's.
BALANCED = "http://replicas"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Replicas:
    """N registry processes sharing `env` (metadata, blob store, signer)."""

    def __init__(self, binary: str, count: int, env: dict, root: str) -> None:
        self.binary = binary
        self.env = env
        self.root = root
        self.ports = [free_port() for _ in range(count)]
        self.dirs = [os.path.join(root, f"replica{i + 1}") for i in range(count)]
        self.procs: list[subprocess.Popen | None] = [None] * count
        self.lock = threading.Lock()
        self.live: set[int] = set()
        # Upload requests (POST/PATCH/PUT under /blobs/uploads/) in flight
        # per replica, maintained by BalancedSession.
        self.uploads_in_flight = [0] * count
        self.retried = 0  # requests refused by a dead replica, sent to another
        self.server_errors: list[str] = []  # every 5xx answer, described

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def count(self) -> int:
        return len(self.ports)

    def start(self, i: int) -> None:
        os.makedirs(self.dirs[i], exist_ok=True)
        env = dict(self.env, BPF_REGISTRY_HTTP_ADDR=f"127.0.0.1:{self.ports[i]}",
                   BPF_REGISTRY_DATA_DIR=self.dirs[i])
        log = open(self.dirs[i] + ".log", "ab")
        self.procs[i] = subprocess.Popen([self.binary], env=env, stdout=log, stderr=log)
        log.close()
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(f"{self.url(i)}/healthz", timeout=2).status_code == 200:
                    with self.lock:
                        self.live.add(i)
                    return
            except requests.RequestException:
                pass
            if self.procs[i].poll() is not None:
                raise SystemExit(f"replica {i + 1} exited with {self.procs[i].returncode} at start-up "
                                 f"(log {self.dirs[i]}.log)")
            time.sleep(0.05)
        raise SystemExit(f"replica {i + 1} did not become healthy (log {self.dirs[i]}.log)")

    def kill(self, i: int) -> None:
        """SIGKILL; from then on its port refuses connections."""
        with self.lock:
            self.live.discard(i)
        p = self.procs[i]
        if p and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def kill_all(self) -> None:
        for i in range(self.count()):
            self.kill(i)

    def alive(self) -> list[int]:
        with self.lock:
            return sorted(self.live)

    def pick_mid_push(self, rng: random.Random, wait: float) -> tuple[int, bool]:
        """A live replica with an upload request in flight (waits up to
        `wait` seconds for one); else any live replica. Returns it and
        whether it was mid-push."""
        deadline = time.time() + wait
        while True:
            with self.lock:
                busy = [i for i in sorted(self.live) if self.uploads_in_flight[i] > 0]
                live = sorted(self.live)
            if busy:
                return rng.choice(busy), True
            if time.time() >= deadline:
                return rng.choice(live), False
            time.sleep(0.005)


def _refused(e: requests.ConnectionError) -> bool:
    """The connection was never made: nothing of the request was sent."""
    reason = getattr(e.args[0], "reason", None) if e.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


class BalancedSession(requests.Session):
    """Each request to a random replica; refused ones retried elsewhere."""

    def __init__(self, replicas: Replicas, rng: random.Random) -> None:
        super().__init__()
        self.replicas = replicas
        self.rng = rng

    def request(self, method, url, *args, **kwargs):  # noqa: D401 (requests' signature)
        if not url.startswith(BALANCED):
            return super().request(method, url, *args, **kwargs)
        path = url[len(BALANCED):]
        upload = "/blobs/uploads/" in path and method.upper() in ("POST", "PATCH", "PUT")
        tried: set[int] = set()
        deadline = time.time() + 30
        while True:
            # Like a load balancer between two health checks, a client does
            # not know which replica is down: it finds out by being refused.
            live = [i for i in range(self.replicas.count()) if i not in tried]
            if not live:
                # Every live one refused (a restart in progress): start over.
                if time.time() > deadline:
                    raise requests.ConnectionError(f"no replica accepted {method} {path}")
                time.sleep(0.05)
                tried.clear()
                continue
            i = self.rng.choice(live)
            if upload:
                with self.replicas.lock:
                    self.replicas.uploads_in_flight[i] += 1
            try:
                r = super().request(method, self.replicas.url(i) + path, *args, **kwargs)
            except requests.ConnectionError as e:
                if not _refused(e):
                    raise  # cut off after it was sent: outcome unknown
                tried.add(i)
                with self.replicas.lock:
                    self.replicas.retried += 1
                continue
            finally:
                if upload:
                    with self.replicas.lock:
                        self.replicas.uploads_in_flight[i] -= 1
            if r.status_code >= 500:
                with self.replicas.lock:
                    self.replicas.server_errors.append(
                        f"{method} {path.split('?')[0]} on replica {i + 1}: {r.status_code} {r.text[:200]}")
            return r


class TcpBalancer:
    """127.0.0.1:<port> forwarding each connection to a random backend port
    that accepts it (the others are tried in turn). A backend that dies
    cuts its connections; the client reconnects through here to another."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        # Backends a health check would keep out: a restarted Garage node
        # answers on its S3 port before it has reconnected to its peers,
        # and until then every request it serves misses the quorum (503).
        self.lock = threading.Lock()
        self.held_out: set[int] = set()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        self.rng = random.Random()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def hold_out(self, port: int) -> None:
        with self.lock:
            self.held_out.add(port)

    def admit(self, port: int) -> None:
        with self.lock:
            self.held_out.discard(port)

    def _connect(self) -> socket.socket | None:
        with self.lock:
            order = [p for p in self.backends if p not in self.held_out] or list(self.backends)
        self.rng.shuffle(order)
        for port in order:
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                continue
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream = self._connect()
        if upstream is None:
            client.close()
            return
        upstream.settimeout(None)
        done = threading.Event()

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while True:
                    data = src.recv(1 << 16)
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
            except OSError:
                # One side died: cut both, the client sees the connection drop.
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            finally:
                if done.is_set():
                    client.close()
                    upstream.close()
                done.set()

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)


class GarageNodes:
    """The nodes of `conformance/garage.sh start3 DIR`: kill -9 and restart."""

    def __init__(self, garage_dir: str, script: str) -> None:
        self.dir = garage_dir
        self.script = script
        self.balancer: TcpBalancer | None = None  # set by the caller
        self.readmit: threading.Thread | None = None
        self.waiter: subprocess.Popen | None = None
        self.count = len([d for d in os.listdir(garage_dir) if d.startswith("node")
                          and os.path.isdir(os.path.join(garage_dir, d))])
        if self.count < 3:
            raise SystemExit(f"{garage_dir} has {self.count} Garage nodes; the fault test needs 3 "
                             f"(conformance/garage.sh start3 DIR)")
        self.down: int | None = None

    def s3_ports(self) -> list[int]:
        ports = []
        for n in range(1, self.count + 1):
            with open(os.path.join(self.dir, f"node{n}", "s3_port")) as f:
                ports.append(int(f.read().strip()))
        return ports

    def wait_healthy(self) -> None:
        """Every node back in the cluster (one node down at a time, never
        two) and in the balancer."""
        if self.readmit:
            self.readmit.join()
            self.readmit = None
        r = subprocess.run(["bash", self.script, "wait-healthy", self.dir], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"the Garage cluster did not recover: {r.stderr.strip()}")

    def kill(self, n: int) -> None:
        subprocess.run(["bash", self.script, "kill", self.dir, str(n)], check=True, capture_output=True)
        self.down = n

    def restart(self) -> None:
        """Starts the node again; the balancer sends it connections only
        once every node sees every other (a health check's job), checked in
        the background while the load goes on."""
        if self.down is None:
            return
        port = self.s3_ports()[self.down - 1]
        if self.balancer:
            self.balancer.hold_out(port)
        r = subprocess.run(["bash", self.script, "restart", self.dir, str(self.down)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"garage node {self.down} did not restart: {r.stderr.strip()}")
        self.down = None
        if self.balancer:
            balancer = self.balancer

            waiter = subprocess.Popen(["bash", self.script, "wait-healthy", self.dir],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.waiter = waiter

            def readmit() -> None:
                waiter.wait()
                balancer.admit(port)
            self.readmit = threading.Thread(target=readmit, daemon=True)
            self.readmit.start()

    def close(self) -> None:
        """Stops a readmission check still waiting (it must not outlive us)."""
        if self.waiter and self.waiter.poll() is None:
            self.waiter.terminate()
            self.waiter.wait()
