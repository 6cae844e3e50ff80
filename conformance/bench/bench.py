#!/usr/bin/env python3
"""bench.py - side-by-side benchmark of bpf-registry and CNCF distribution 2.8.2.

Run it through bench.sh (which installs the tools and builds the release
binary). Starts both registries on 127.0.0.1 with fresh data dirs, runs every
workload against both in the same run, alternating which goes first, for
--reps repetitions, and writes a markdown table of medians to
conformance/bench/results/latest.md (latest-quick.md with --quick) plus the
raw numbers as JSON next to it. See conformance/bench/README.md.

Nothing here is a test: no result fails the run. The exit status is 1 only
when something errored (a server did not start, a request failed, the
generated store did not validate).
"""

import argparse
import base64
import datetime
import hashlib
import http.client
import json
import math
import mmap
import multiprocessing
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import gen_store  # noqa: E402

MiB = 1024 * 1024
MB = 1e6
CLK_TCK = os.sysconf("SC_CLK_TCK")
T0 = time.monotonic()
BPF, DIST = "bpf-registry", "distribution"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
EMPTY_DIGEST = "sha256:" + hashlib.sha256(EMPTY).hexdigest()

ERRORS = []
NOTES = []


def log(msg):
    print(f"[bench {time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def error(msg):
    ERRORS.append(msg)
    log("ERROR: " + msg)


class BenchError(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise BenchError(msg)


# --------------------------------------------------------------------------
# sizes


class Sizes:
    def __init__(self, quick):
        self.quick = quick
        if quick:
            self.blob = 32 * MiB
            self.chunk = 4 * MiB
            self.wrk_secs = 2
            self.referrers = 100
            self.referrer_gets = 20
            self.posts = 48
            self.post_bytes = 1 * MiB
            self.store = (100, 10, 100)  # repos, versions, hosts
            self.forhost_secs = 2
            self.rss_blob = 128 * MiB
        else:
            self.blob = 256 * MiB
            self.chunk = 8 * MiB
            self.wrk_secs = 10
            self.referrers = 1000
            self.referrer_gets = 20
            self.posts = 200
            self.post_bytes = 1 * MiB
            self.store = (1000, 100, 1000)
            self.forhost_secs = 10
            self.rss_blob = 1024 * MiB
        self.conns = 64
        self.post_clients = 8
        self.forhost_clients = 8

    def human(self, n):
        if n >= 1024 * MiB and n % (1024 * MiB) == 0:
            return f"{n // (1024 * MiB)} GiB"
        return f"{n // MiB} MiB"


# --------------------------------------------------------------------------
# processes


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


RUNNING = set()


class Server:
    """A registry process we started; stopped by its own PID only."""

    counter = 0

    def __init__(self, kind, argv, env, workdir, port, ready_path, data_dir):
        self.kind, self.argv, self.env, self.workdir = kind, argv, env, workdir
        self.port, self.ready_path, self.data_dir = port, ready_path, data_dir
        self.base = f"http://127.0.0.1:{port}"
        Server.counter += 1
        self.log_path = os.path.join(workdir, f"{'bpf' if kind == BPF else 'dist'}-{Server.counter}.log")
        self.proc = None

    def start(self):
        self.logf = open(self.log_path, "wb")
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=self.logf, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=self.workdir,
        )
        RUNNING.add(self)
        return self

    def wait_ready(self, timeout=120.0):
        """Seconds from spawn to the first 200 on ready_path."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.kind} exited with {self.proc.returncode} at start-up; log {self.log_path}: "
                                 + self.log_tail())
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=max(1.0, deadline - time.perf_counter()))
                c.request("GET", self.ready_path)
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    return time.perf_counter() - self.t_spawn
            except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
                pass
            except OSError:
                pass
            time.sleep(0.002)
        raise BenchError(f"{self.kind} not ready after {timeout} s; log {self.log_path}: " + self.log_tail())

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n=5):
        return " | ".join(self.log_text().strip().splitlines()[-n:])

    def cpu(self):
        """User + system CPU seconds of the server so far."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            return float("nan")

    def status_kib(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise BenchError(f"no {field} in /proc/{self.proc.pid}/status")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.logf.close()
        RUNNING.discard(self)


def bpf_server(binary, workdir, data_dir, level="WARN", extra_env=None):
    port = free_port()
    env = dict(os.environ)
    env.update(
        BPF_REGISTRY_HTTP_ADDR=f"127.0.0.1:{port}",
        BPF_REGISTRY_DATA_DIR=data_dir,
        BPF_REGISTRY_LOG_LEVEL=level,
    )
    env.update(extra_env or {})
    return Server(BPF, [binary], env, workdir, port, "/healthz", data_dir)


DIST_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""


def dist_server(workdir, data_dir):
    port = free_port()
    cfg = os.path.join(workdir, f"distribution-{port}.yml")
    with open(cfg, "w") as f:
        f.write(DIST_CONFIG.format(data=data_dir, port=port))
    return Server(DIST, ["docker-registry", "serve", cfg], dict(os.environ), workdir, port, "/v2/", data_dir)


# distribution's S3 driver on the same Garage as bpf-registry's S3 store.
# Redirects off: blob GETs go through the registry, as bpf-registry's do
# (with redirects on, a client would fetch from the object store itself).
DIST_S3_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  s3:
    accesskey: {key}
    secretkey: {secret}
    region: {region}
    regionendpoint: {endpoint}
    bucket: {bucket}
    rootdirectory: /{prefix}
    secure: false
    v4auth: true
  redirect:
    disable: true
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def dist_s3_server(workdir, data_dir, s3, prefix):
    port = free_port()
    cfg = os.path.join(workdir, f"distribution-s3-{port}.yml")
    with open(cfg, "w") as f:
        f.write(DIST_S3_CONFIG.format(port=port, prefix=prefix, **s3))
    # aws-sdk-go (v1) refuses AWS_CA_BUNDLE with distribution's HTTP
    # transport ("LoadCustomCABundleError"); the endpoint is plain HTTP.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    return Server(DIST, ["docker-registry", "serve", cfg], env, workdir, port, "/v2/", data_dir)


def shared_engines():
    """PostgreSQL cluster URL, psql and the Garage S3 endpoint that bench.sh started, or None."""
    pg, psql, url = (os.environ.get(k) for k in ("BPF_BENCH_POSTGRES", "BPF_BENCH_PSQL", "BPF_BENCH_S3_URL"))
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not all((pg, psql, url, key, secret)):
        return None
    u = urllib.parse.urlparse(url)
    q = urllib.parse.parse_qs(u.query)
    s3 = {"bucket": u.netloc, "endpoint": q["endpoint"][0], "region": q.get("region", ["garage"])[0],
          "key": key, "secret": secret}
    return pg, psql, s3


def run_shared(args, sizes, workdir, res):
    """Push, pull, chunked push and manifest GET with bpf-registry on PostgreSQL + Garage and
    distribution's S3 driver on the same Garage (fresh database, fresh bucket prefixes)."""
    engines = shared_engines()
    if engines is None:
        error("shared engines: BPF_BENCH_POSTGRES, BPF_BENCH_PSQL, BPF_BENCH_S3_URL and the AWS_* key "
              "are not set (bench.sh starts PostgreSQL and Garage and sets them)")
        return
    pg, psql, s3 = engines
    stamp = f"{int(time.time())}_{os.getpid()}"
    db = f"bench_{stamp}"
    subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg, "-c", f"CREATE DATABASE {db}"],
                   check=True)
    env = {
        "BPF_REGISTRY_METADATA": pg.rsplit("/", 1)[0] + "/" + db,
        "BPF_REGISTRY_BLOB_STORE": f"s3://{s3['bucket']}/bench-bpf-{stamp}?endpoint={s3['endpoint']}"
                                   f"&region={s3['region']}",
    }
    bpf = Registry(bpf_server(args.binary, workdir, fresh_dir(workdir, "bpf-shared"), extra_env=env).start())
    dist = Registry(dist_s3_server(workdir, fresh_dir(workdir, "dist-shared"), s3, f"bench-dist-{stamp}").start())
    try:
        bpf.server.wait_ready()
        dist.server.wait_ready()
        log(f"shared engines: bpf-registry on {bpf.base} (PostgreSQL {db}, Garage), distribution S3 on {dist.base}")
        for reg in (bpf, dist):
            reg.prepare(sizes)
        blob = BigBlob(sizes.blob)
        for rep in range(args.reps):
            order = [bpf, dist] if rep % 2 == 0 else [dist, bpf]
            log(f"shared rep {rep + 1}/{args.reps}: order {order[0].kind}, {order[1].kind}")
            steps = [
                ("push", lambda r: w_push_mono(r, blob, res, "s3_push")),
                ("pull", lambda r: w_pull(r, blob, res, "s3_pull")),
                # The same blob again: a fleet pulls a program many times.
                ("pull again", lambda r: w_pull(r, blob, res, "s3_pull_again")),
                ("chunked", lambda r: w_push_chunked(r, blob, res, "s3_chunked", sizes.chunk)),
                ("manifest GET", lambda r: w_manifest_get(r, res, ("s3_mget", "s3_mget_p99"), sizes)),
            ]
            for label, fn in steps:
                for reg in order:
                    try:
                        log(f"  S3 {label:13s} {reg.kind:13s} {fn(reg)}")
                    except Exception as e:  # noqa: BLE001 - record it, go on with the next workload
                        error(f"shared rep {rep + 1} {label} {reg.kind}: {e!r}")
                    check(reg.server.alive(), f"{reg.kind} (shared engines) died; log {reg.server.log_path}: "
                          + reg.server.log_tail())
    finally:
        for reg in (bpf, dist):
            reg.server.stop()
            shutil.rmtree(reg.server.data_dir, ignore_errors=True)


def fresh_dir(workdir, name):
    d = tempfile.mkdtemp(prefix=name + "-", dir=workdir)
    return d


def machine_busy():
    """CPU seconds all processes used on this machine so far (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user + nice + system; irq/softirq time is left out because it is not
        # charged to any process (our own loopback traffic would count as "others")
        return (v[0] + v[1] + v[2]) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return float("nan")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------
# HTTP helpers


def conn_for(base, timeout=600):
    u = urllib.parse.urlsplit(base)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)


def location_path(loc):
    """Path and query of a Location header (absolute or relative)."""
    u = urllib.parse.urlsplit(loc)
    return u.path + ("?" + u.query if u.query else "")


def with_digest(path, digest):
    return f"{path}{'&' if '?' in path else '?'}digest={digest}"


def call(c, method, path, body=None, headers=None, expect=None):
    h = dict(headers or {})
    if body is None and method in ("POST", "PUT", "PATCH"):
        h.setdefault("Content-Length", "0")
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    if expect is not None and r.status not in (expect if isinstance(expect, tuple) else (expect,)):
        raise BenchError(f"{method} {path[:120]} -> {r.status} {data[:300]!r}")
    return r, data


def push_blob_small(base, repo, data):
    """Two-step monolithic push of a small blob; returns its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    c = conn_for(base)
    r, _ = call(c, "POST", f"/v2/{repo}/blobs/uploads/", expect=202)
    call(c, "PUT", with_digest(location_path(r.getheader("Location")), digest), body=data,
         headers={"Content-Type": "application/octet-stream"}, expect=201)
    c.close()
    return digest


def put_manifest(c, repo, ref, body):
    call(c, "PUT", f"/v2/{repo}/manifests/{ref}", body=body, headers={"Content-Type": OCI_MANIFEST}, expect=201)
    return "sha256:" + hashlib.sha256(body).hexdigest()


def cjson(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def pct(values, p):
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, math.ceil(p / 100 * len(s)) - 1)
    return s[k]


# --------------------------------------------------------------------------
# the big test blob


class BigBlob:
    """Random content generated once; renew() changes the first bytes so every
    push has a new digest (hashed outside the timed window)."""

    def __init__(self, size):
        self.buf = bytearray(os.urandom(size))
        self.n = 0
        self.digest = None

    def renew(self):
        self.n += 1
        self.buf[:32] = hashlib.sha256(f"{os.getpid()}/{time.time_ns()}/{self.n}".encode()).digest()
        t0 = time.perf_counter()
        self.digest = "sha256:" + hashlib.sha256(self.buf).hexdigest()
        self.hash_mbs = len(self.buf) / (time.perf_counter() - t0) / MB
        return self.digest


def disk_write_mbs(directory, buf):
    """Write + fsync of buf into a new file on the data dirs' filesystem."""
    path = os.path.join(directory, "disk-ceiling.tmp")
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(buf)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    os.unlink(path)
    return len(buf) / dt / MB


def disk_direct_write_mbs(directory, buf):
    """Write (O_DIRECT, from page-aligned memory, 1 MiB per call) + fsync of buf into a new file on
    the data dirs' filesystem: what the disk takes when the page cache is not in the way. None where
    the filesystem refuses O_DIRECT."""
    block = 1 << 20
    aligned = mmap.mmap(-1, block)
    path = os.path.join(directory, "disk-ceiling-direct.tmp")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    except OSError:
        return None
    try:
        t0 = time.perf_counter()
        for at in range(0, len(buf) - len(buf) % block, block):
            aligned[:] = buf[at:at + block]
            os.write(fd, aligned)
        os.fsync(fd)
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
        aligned.close()
        os.unlink(path)
    return (len(buf) - len(buf) % block) / dt / MB


def push_monolithic(base, repo, body, digest):
    """POST + PUT ?digest= with the whole body in one sendall. Returns seconds."""
    c = conn_for(base)
    c.connect()
    t0 = time.perf_counter()
    r, _ = call(c, "POST", f"/v2/{repo}/blobs/uploads/", expect=202)
    path = with_digest(location_path(r.getheader("Location")), digest)
    call(c, "PUT", path, body=memoryview(body),
         headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}, expect=201)
    dt = time.perf_counter() - t0
    c.close()
    return dt


def curl_pull(url, expect_size):
    """curl to /dev/null; returns bytes/s as curl measured it."""
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{size_download} %{http_code}", url],
        capture_output=True, text=True, timeout=600,
    ).stdout.split()
    check(len(out) == 3, f"curl output {out}")
    speed, size, code = float(out[0]), int(out[1]), out[2]
    check(code == "200" and size == expect_size, f"pull {url}: HTTP {code}, {size} bytes (expected {expect_size})")
    return speed


# --------------------------------------------------------------------------
# client ceiling: the same client code against a trivial loopback sink


def _sink_serve(lsock, blob):
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    while True:
        c, _ = lsock.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        try:
            while True:
                while b"\r\n\r\n" not in pending:
                    got = c.recv(65536)
                    if not got:
                        raise EOFError
                    pending += got
                head, pending = pending.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method = lines[0].split()[0]
                length = 0
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v.strip())
                left = length - len(pending)
                pending = b"" if left >= 0 else pending[length:]
                while left > 0:
                    n = c.recv_into(view, min(left, len(buf)))
                    if n == 0:
                        raise EOFError
                    left -= n
                if method == "POST":
                    c.sendall(b"HTTP/1.1 202 Accepted\r\nLocation: /sink/upload\r\nContent-Length: 0\r\n\r\n")
                elif method == "GET":
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(blob))
                    c.sendall(blob)
                else:
                    c.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        except (EOFError, OSError):
            pass
        finally:
            c.close()


class Sink:
    def __init__(self, blob):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        ctx = multiprocessing.get_context("fork")
        self.proc = ctx.Process(target=_sink_serve, args=(self.lsock, blob), daemon=True)
        self.proc.start()

    def stop(self):
        self.proc.terminate()
        self.proc.join(10)
        self.lsock.close()


# --------------------------------------------------------------------------
# wrk


def wrk_latency(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[unit]  # -> ms


def run_wrk(url, conns, secs, threads=2, script=None, headers=()):
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--latency", "--timeout", "10s"]
    for h in headers:
        argv += ["-H", h]
    if script:
        argv += ["-s", script]
    argv.append(url)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
    out = p.stdout
    check(p.returncode == 0, f"wrk exited {p.returncode}: {p.stderr.strip()[:300]}")
    res = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    check(m, f"no Requests/sec in wrk output: {out[:500]}")
    res["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    for pc in ("50", "75", "90", "99"):
        m = re.search(rf"^\s*{pc}%\s+(\S+)\s*$", out, re.M)
        res[f"p{pc}"] = wrk_latency(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    check(res["requests"] > 0, f"wrk {url}: no request completed")
    check(res["non2xx"] == 0, f"wrk {url}: {res['non2xx']} non-2xx responses")
    check(res["socket_errors"] == 0, f"wrk {url}: socket errors: {m.group(0) if m else ''}")
    return res


# --------------------------------------------------------------------------
# results


class Results:
    def __init__(self):
        self.values = {}  # (workload, registry) -> [values]
        self.cpu = {}  # (workload, registry) -> [(server %core, client %core, others %core)]
        self.extra = {}

    def add(self, workload, registry, value, ms=None):
        self.values.setdefault((workload, registry), []).append(value)
        if ms is not None and ms.wall > 0:
            self.cpu.setdefault((workload, registry), []).append(
                (100 * ms.server_cpu / ms.wall, 100 * ms.client_cpu / ms.wall, 100 * ms.others_cpu / ms.wall))

    def median(self, workload, registry):
        v = [x for x in self.values.get((workload, registry), []) if x is not None and not math.isnan(x)]
        return statistics.median(v) if v else None


class Measure:
    """Wall time, server CPU and client CPU (this process + waited children) of a block."""

    def __init__(self, server):
        self.server = server

    def __enter__(self):
        self.s0 = self.server.cpu()
        self.c0 = time.process_time() + children_cpu()
        self.m0 = machine_busy()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.server_cpu = self.server.cpu() - self.s0
        self.client_cpu = time.process_time() + children_cpu() - self.c0
        self.others_cpu = max(0.0, machine_busy() - self.m0 - self.server_cpu - self.client_cpu)
        return False


# --------------------------------------------------------------------------
# workloads against both registries


class Registry:
    """One running registry under test plus what was prepared on it."""

    def __init__(self, server):
        self.server = server
        self.kind = server.kind
        self.base = server.base
        self.last_big = None

    def prepare(self, sizes):
        base = self.base
        # manifest GET / blob HEAD targets
        repo = "bench/manifest"
        config = cjson({"architecture": "amd64", "os": "linux", "bench": os.urandom(8).hex()})
        layer = os.urandom(4096)
        cd = push_blob_small(base, repo, config)
        ld = push_blob_small(base, repo, layer)
        m = cjson({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": len(layer)}],
            "annotations": {"org.opencontainers.image.title": "bench"},
        })
        c = conn_for(base)
        put_manifest(c, repo, "bench", m)
        self.manifest_url = f"{base}/v2/{repo}/manifests/bench"
        self.head_url = f"{base}/v2/{repo}/blobs/{ld}"
        r, _ = call(c, "HEAD", f"/v2/{repo}/blobs/{ld}", expect=200)
        check(r.getheader("Content-Length") == str(len(layer)), f"{self.kind}: HEAD Content-Length")
        # referrers: a subject and N referrers
        rrepo = "bench/referrers"
        push_blob_small(base, rrepo, EMPTY)
        empty = {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2}
        subject = cjson({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                         "artifactType": "application/vnd.example.bench.subject.v1",
                         "config": empty, "layers": [empty]})
        sd = put_manifest(c, rrepo, "subject", subject)
        sdesc = {"mediaType": OCI_MANIFEST, "digest": sd, "size": len(subject)}
        bodies = [cjson({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                         "artifactType": "application/vnd.example.bench.referrer.v1",
                         "config": empty, "layers": [empty], "subject": sdesc,
                         "annotations": {"bench.index": str(i)}}) for i in range(sizes.referrers)]
        with Measure(self.server) as ms:
            for b in bodies:
                put_manifest(c, rrepo, "sha256:" + hashlib.sha256(b).hexdigest(), b)
        c.close()
        self.referrers_path = f"/v2/{rrepo}/referrers/{sd}"
        return ms, len(bodies) / ms.wall


def w_push_mono(reg, blob, res, name):
    digest = blob.renew()
    with Measure(reg.server) as ms:
        push_monolithic(reg.base, "bench/blobs", blob.buf, digest)
    reg.last_big = digest
    mbs = len(blob.buf) / ms.wall / MB
    res.add(name, reg.kind, mbs, ms)
    return f"{mbs:.0f} MB/s"


def w_pull(reg, blob, res, name):
    url = f"{reg.base}/v2/bench/blobs/blobs/{reg.last_big}"
    with Measure(reg.server) as ms:
        speed = curl_pull(url, len(blob.buf))
    mbs = speed / MB
    res.add(name, reg.kind, mbs, ms)
    return f"{mbs:.0f} MB/s"


def w_pull_cold(reg, blob, res, name):
    """The same pull after dropping the OS page cache: both registries read
    the disk into pages the machine has used before (on a fresh VM the
    first pull after a direct-I/O push also pays the first touch of guest
    memory the page cache has never held; this row shows the pull without
    that)."""
    why = drop_page_cache()
    check(why is None, f"cannot drop the page cache: {why}")
    return w_pull(reg, blob, res, name)


def w_push_chunked(reg, blob, res, name, chunk):
    digest = blob.renew()
    chunks = [bytes(blob.buf[i:i + chunk]) for i in range(0, len(blob.buf), chunk)]
    s = requests.Session()
    with Measure(reg.server) as ms:
        r = s.post(f"{reg.base}/v2/bench/chunked/blobs/uploads/", data=b"")
        check(r.status_code == 202, f"POST upload: {r.status_code} {r.text[:200]}")
        loc = urllib.parse.urljoin(reg.base, r.headers["Location"])
        off = 0
        for ch in chunks:
            r = s.patch(loc, data=ch, headers={"Content-Type": "application/octet-stream",
                                               "Content-Range": f"{off}-{off + len(ch) - 1}"})
            check(r.status_code == 202, f"PATCH at {off}: {r.status_code} {r.text[:200]}")
            loc = urllib.parse.urljoin(reg.base, r.headers["Location"])
            off += len(ch)
        r = s.put(with_digest(loc, digest), data=b"")
        check(r.status_code == 201, f"PUT ?digest: {r.status_code} {r.text[:200]}")
    s.close()
    mbs = len(blob.buf) / ms.wall / MB
    res.add(name, reg.kind, mbs, ms)
    return f"{mbs:.0f} MB/s ({len(chunks)} chunks)"


def w_manifest_get(reg, res, names, sizes):
    with Measure(reg.server) as ms:
        w = run_wrk(reg.manifest_url, sizes.conns, sizes.wrk_secs, headers=[f"Accept: {OCI_MANIFEST}"])
    res.add(names[0], reg.kind, w["rps"], ms)
    res.add(names[1], reg.kind, w["p99"])
    return f"{w['rps']:.0f} req/s, p99 {w['p99']:.2f} ms"


def run_ab_head(url, conns, secs):
    """HEAD load with ApacheBench (wrk 4.1 and h2load wait for a body after a
    HEAD response that has a Content-Length, so they count no request)."""
    argv = ["ab", "-q", "-i", "-k", "-c", str(conns), "-t", str(secs), "-n", "100000000", url]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
    out = p.stdout
    check(p.returncode == 0, f"ab exited {p.returncode}: {(p.stderr or out).strip()[-300:]}")
    m = re.search(r"Requests per second:\s+([\d.]+)", out)
    check(m, f"no 'Requests per second' in ab output: {out[-500:]}")
    res = {"rps": float(m.group(1))}
    m = re.search(r"Complete requests:\s+(\d+)", out)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"^\s*99%\s+(\d+)", out, re.M)
    res["p99"] = float(m.group(1)) if m else float("nan")
    failed = int((re.search(r"Failed requests:\s+(\d+)", out) or [0, 0])[1])
    non2xx = int((re.search(r"Non-2xx responses:\s+(\d+)", out) or [0, 0])[1])
    check(res["requests"] > 0 and failed == 0 and non2xx == 0,
          f"ab {url}: {res['requests']} requests, {failed} failed, {non2xx} non-2xx")
    return res


def w_blob_head(reg, res, name, sizes):
    with Measure(reg.server) as ms:
        w = run_ab_head(reg.head_url, sizes.conns, sizes.wrk_secs)
    res.add(name, reg.kind, w["rps"], ms)
    return f"{w['rps']:.0f} req/s, p99 {w['p99']:.0f} ms"


def w_referrers(reg, res, name, sizes):
    c = conn_for(reg.base)
    r, data = call(c, "GET", reg.referrers_path)
    if r.status == 404:
        c.close()
        res.add(name, reg.kind, None)
        return "n/a (404: no referrers API)"
    check(r.status == 200, f"referrers: {r.status} {data[:200]!r}")
    n = len(json.loads(data).get("manifests", []))
    check(n == sizes.referrers, f"referrers: {n} manifests, expected {sizes.referrers}")
    times = []
    with Measure(reg.server) as ms:
        for _ in range(sizes.referrer_gets):
            t0 = time.perf_counter()
            call(c, "GET", reg.referrers_path, expect=200)
            times.append((time.perf_counter() - t0) * 1e3)
    c.close()
    v = statistics.median(times)
    res.add(name, reg.kind, v, ms)
    return f"{v:.2f} ms"


# --------------------------------------------------------------------------
# bpf-registry only


def w_post_artifacts(reg, res, names, sizes, rep):
    n, k = sizes.posts, sizes.post_clients
    bodies = []
    for i in range(n):
        bodies.append(cjson({
            "name": f"bench-post/client-{i % k}",
            "version": f"{rep}.{i}",
            "description": "benchmark payload",
            "type": "map",
            "architecture": "x86_64",
            "data": base64.b64encode(os.urandom(sizes.post_bytes)).decode(),
        }))
    lock = threading.Lock()
    nxt = [0]
    lat = []
    errs = []

    def worker():
        c = conn_for(reg.base)
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= n:
                break
            t0 = time.perf_counter()
            try:
                c.request("POST", "/artifacts", body=bodies[i], headers={"Content-Type": "application/json"})
                r = c.getresponse()
                body = r.read()
                if r.status != 201:
                    errs.append(f"{r.status} {body[:200]!r}")
            except Exception as e:  # noqa: BLE001
                errs.append(repr(e))
                c.close()
                c = conn_for(reg.base)
            with lock:
                lat.append((time.perf_counter() - t0) * 1e3)
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(k)]
    with Measure(reg.server) as ms:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    check(not errs, f"POST /artifacts: {len(errs)} failures, first: {errs[:1]}")
    p50, p99 = pct(lat, 50), pct(lat, 99)
    res.add(names[0], BPF, p50, ms)
    res.add(names[1], BPF, p99)
    res.add(names[2], BPF, n / ms.wall)
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {n / ms.wall:.0f} req/s"


def ensure_store(sizes, cache_root, binary):
    repos, versions, hosts = sizes.store
    out = os.path.join(cache_root, gen_store.key(repos, versions, hosts))
    meta_path = os.path.join(out, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        log(f"store: cached {out} ({meta['artifacts']} artifacts, {meta['associations']} associations)")
        return out, meta
    log(f"store: generating {repos * versions} artifacts and associations into {out} (cached for later runs)")
    os.makedirs(cache_root, exist_ok=True)
    t0 = time.monotonic()
    meta = gen_store.generate(out, repos, versions, hosts, binary)
    log(f"store: generated {meta['files']} blobs and their rows in {time.monotonic() - t0:.0f} s")
    return out, meta


def drop_page_cache():
    """Drops the OS page cache; None when done, else why it could not be."""
    if os.geteuid() != 0:
        return "not root"
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        return f"writing /proc/sys/vm/drop_caches failed: {e}"
    return None


def parse_open(text):
    """duration_ms of the server's "metadata store open" INFO line."""
    for line in text.splitlines():
        if "metadata store open" in line:
            m = re.search(r"duration_ms=(\d+)", line)
            if m:
                return int(m.group(1))
    return None


def startup_runs(label, names, binary, workdir, store, meta, reps, res, extra_env=None):
    """Start-up (spawn -> first 200 on /healthz) on the generated store: the first start after
    dropping the OS page cache, then `reps` warm starts; each with the "metadata store open" time.
    The cold start's server also validates the store (after it was timed)."""
    cold, warm, opened = names
    for rep in range(reps + 1):
        why = drop_page_cache() if rep == 0 else None
        if rep == 0 and why:
            NOTES.append(f"{label}: the first start-up ran without dropping the page cache ({why})")
        s = bpf_server(binary, workdir, store, level="INFO", extra_env=extra_env).start()
        try:
            t = s.wait_ready()
            ms = None
            for _ in range(200):
                ms = parse_open(s.log_text())
                if ms is not None:
                    break
                time.sleep(0.01)
            res.add(cold if rep == 0 else warm, BPF, t)
            res.add(opened, BPF, ms)
            kind = ("cold" if not why else "first, cache not dropped") if rep == 0 else "warm"
            log(f"  {label} start-up {rep + 1}/{reps + 1} ({kind}): {t:.3f} s to first 200, "
                f"metadata store open {ms} ms")
            if ms is None:
                NOTES.append(f"{label}: no \"metadata store open\" line with duration_ms in the INFO log")
            if rep == 0:
                validate_store(s.base, meta)
                log(f"  {label}: store validated (GET /artifacts/<id>, tags, referrers, for-host counts)")
        except Exception as e:  # noqa: BLE001 - record it, go on with the next workload
            error(f"{label} start-up {rep + 1}: {e}")
        finally:
            s.stop()


def postgres_engine():
    """The PostgreSQL cluster URL and psql that bench.sh started, or None."""
    pg, psql = os.environ.get("BPF_BENCH_POSTGRES"), os.environ.get("BPF_BENCH_PSQL")
    return (pg, psql) if pg and psql else None


def startup_postgres(args, workdir, store, meta, res):
    """The generated store's rows copied into a fresh PostgreSQL database with `bpf-registry
    migrate` (blobs stay in the store's folder), then the same start-up runs on it."""
    engine = postgres_engine()
    if engine is None:
        NOTES.append("start-up on PostgreSQL not measured: no PostgreSQL in this run (bench.sh starts one "
                     "unless `--skip shared`)")
        return
    pg, psql = engine
    db = f"bench_startup_{int(time.time())}_{os.getpid()}"
    url = pg.rsplit("/", 1)[0] + "/" + db
    subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg, "-c", f"CREATE DATABASE {db}"],
                   check=True)
    try:
        env = dict(os.environ, BPF_REGISTRY_DATA_DIR=store, BPF_REGISTRY_LOG_LEVEL="WARN")
        env.pop("BPF_REGISTRY_METADATA", None)
        env.pop("BPF_REGISTRY_BLOB_STORE", None)
        t0 = time.monotonic()
        p = subprocess.run([args.binary, "migrate", "--metadata", url, "--json"], env=env,
                           capture_output=True, text=True, timeout=3600)
        check(p.returncode == 0, f"migrate into PostgreSQL: exit {p.returncode}: {p.stderr[-500:]}")
        log(f"  PostgreSQL: rows migrated into {db} in {time.monotonic() - t0:.0f} s")
        # The cluster writes the bulk load's dirty buffers out now, not during the cold start (one full
        # run measured 1.7 s there; the same migration and cold start alone, 0.04-0.05 s).
        p = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", "CHECKPOINT"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            NOTES.append(f"PostgreSQL: no CHECKPOINT before the cold start ({p.stderr.strip()[-200:]})")
        startup_runs("PostgreSQL", ("pg_startup_cold", "pg_startup", "pg_startup_open"), args.binary, workdir,
                     store, meta, args.reps, res, extra_env={"BPF_REGISTRY_METADATA": url})
    finally:
        subprocess.run([psql, "-X", "-q", "-d", pg, "-c", f"DROP DATABASE IF EXISTS {db}"], check=False)


def validate_store(base, meta):
    c = conn_for(base)
    for s in meta["samples"]:
        r, data = call(c, "GET", f"/artifacts/{s['id']}", expect=200)
        a = json.loads(data)
        check(a["name"] == s["name"] and a["version"] == s["version"] and a["hosts"] == [s["host"]],
              f"GET /artifacts/{s['id']}: {data[:300]!r}")
        r, data = call(c, "GET", f"/v2/{s['name']}/manifests/{s['version']}", expect=200,
                       headers={"Accept": OCI_MANIFEST})
        check(r.getheader("Docker-Content-Digest") == s["id"], f"tag {s['name']}:{s['version']} digest")
        r, data = call(c, "GET", f"/v2/{s['name']}/referrers/{s['id']}", expect=200)
        refs = json.loads(data)["manifests"]
        check([d["digest"] for d in refs] == [s["association"]], f"referrers of {s['id']}: {data[:300]!r}")
    per_host = meta["artifacts_per_host"]
    for h in (0, meta["hosts"] // 2, meta["hosts"] - 1):
        host = meta["host_pattern"] % h
        r, data = call(c, "GET", f"/artifacts/for-host/{host}", expect=200)
        arts = json.loads(data)["artifacts"]
        check(len(arts) == per_host, f"for-host {host}: {len(arts)} artifacts, expected {per_host}")
        check(all(a["hosts"] == [host] for a in arts), f"for-host {host}: wrong hosts")
    r, data = call(c, "GET", "/artifacts/for-host/no-such-host", expect=200)
    check(json.loads(data)["artifacts"] == [], "for-host of an unknown host is not empty")
    r, data = call(c, "GET", "/artifacts?limit=1000", expect=200)
    check(len(json.loads(data)["artifacts"]) == min(1000, meta["artifacts"]), "GET /artifacts?limit=1000 count")
    c.close()


# --------------------------------------------------------------------------
# peak RSS


def stream_blob(size, block):
    """A deterministic pseudo-random stream of `size` bytes: 8 MiB random
    blocks with a counter in front, so the client never holds it whole."""
    n = 0
    i = 0
    while n < size:
        take = min(len(block), size - n)
        head = i.to_bytes(16, "big")
        if take <= 16:
            yield head[:take]
        else:
            yield head
            yield memoryview(block)[16:take]
        n += take
        i += 1


def w_rss(server, sizes, block):
    size = sizes.rss_blob
    h = hashlib.sha256()
    for piece in stream_blob(size, block):
        h.update(piece)
    digest = "sha256:" + h.hexdigest()
    server.start()
    server.wait_ready()
    idle = server.status_kib("VmHWM")
    c = conn_for(server.base)
    t0 = time.perf_counter()
    r, _ = call(c, "POST", "/v2/bench/rss/blobs/uploads/", expect=202)
    call(c, "PUT", with_digest(location_path(r.getheader("Location")), digest), body=stream_blob(size, block),
         headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)}, expect=201)
    push_s = time.perf_counter() - t0
    c.close()
    after_push = server.status_kib("VmHWM")
    speed = curl_pull(f"{server.base}/v2/bench/rss/blobs/{digest}", size)
    peak = server.status_kib("VmHWM")
    server.stop()
    shutil.rmtree(server.data_dir, ignore_errors=True)
    return {"idle": idle / 1024, "after_push": after_push / 1024, "peak": peak / 1024,
            "push_mbs": size / push_s / MB, "pull_mbs": speed / MB}


# --------------------------------------------------------------------------
# machine facts


def sh(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    commit = sh(["git", "rev-parse", "--short", "HEAD"]) or "?"
    dirty = sh(["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "Cargo.toml", "Cargo.lock"])
    return {
        "nproc": os.cpu_count(),
        "nproc_cmd": sh(["nproc"]),
        "cpu": cpu,
        "kernel": platform.release(),
        "mem": mem,
        "commit": commit + (" + uncommitted changes in src/" if dirty else ""),
        "distribution": sh(["docker-registry", "--version"]),
        "wrk": " ".join((sh(["wrk", "-v"]).split() or ["wrk", "?"])[:2]),
        "ab": (re.findall(r"Version (\S+)", sh(["ab", "-V"])) or ["?"])[0],
        "curl": (sh(["curl", "--version"]).splitlines() or [""])[0].split(" (")[0],
        "python": platform.python_version(),
        "fs": sh(["df", "--output=fstype,source", tempfile.gettempdir()]).splitlines()[-1:] or [""],
    }


# --------------------------------------------------------------------------
# report


W = {
    "push": "monolithic blob push, {blob} (POST + PUT ?digest)",
    "pull": "blob pull, {blob} (curl), the first pull after its push",
    "pull_again": "the same blob pulled again",
    "pull_cold": "the same blob after dropping the page cache (both read the disk, into reused memory)",
    "chunked": "chunked blob push, {blob} in {chunk} chunks",
    "mget": "manifest GET by tag, {conns} conns, {wrk}s",
    "mget_p99": "manifest GET by tag, p99",
    "head": "blob HEAD, {conns} conns, {wrk}s (ab -k)",
    "referrers": "referrers listing, {refs} referrers (median of {gets} GETs)",
    "mput": "manifest PUT, {refs} referrers, 1 connection (setup)",
    "post_p50": "POST /artifacts, {post} payload, {pc} clients, p50",
    "post_p99": "POST /artifacts, p99 (over {posts} requests)",
    "post_rps": "POST /artifacts, throughput",
    "forhost_p99": "/artifacts/for-host, {assoc} associations, {fc} conns, p99",
    "forhost_p50": "/artifacts/for-host, p50",
    "forhost_rps": "/artifacts/for-host, throughput",
    "forhost_paced_p99": "/artifacts/for-host, {fc} conns each pausing 2 ms between requests (wrk `delay`), p99",
    "forhost_paced_rps": "/artifacts/for-host paced, throughput",
    "startup_cold": "SQLite: start-up with {arts} artifacts + {assoc} associations (spawn → first 200 /healthz), "
                    "first start after dropping the page cache",
    "startup": "SQLite: start-up, warm (median of {reps} further starts)",
    "startup_open": "  of which opening the metadata store (\"metadata store open\" duration_ms, every start)",
    "pg_startup_cold": "PostgreSQL (rows migrated from the SQLite store, fs blobs, then a CHECKPOINT): start-up, first start after "
                       "dropping the OS page cache (the cluster's own buffers not dropped)",
    "pg_startup": "PostgreSQL: start-up, warm (median of {reps} further starts)",
    "pg_startup_open": "  of which opening the metadata store (duration_ms, every start)",
    "rss": "peak RSS (VmHWM), {rssblob} blob pushed then pulled, small store",
    "s3_push": "PostgreSQL + Garage: monolithic blob push, {blob}",
    "s3_pull": "PostgreSQL + Garage: blob pull, {blob} (curl), the first pull after its push",
    "s3_pull_again": "PostgreSQL + Garage: the same blob pulled again",
    "s3_chunked": "PostgreSQL + Garage: chunked blob push, {blob} in {chunk} chunks",
    "s3_mget": "PostgreSQL + Garage: manifest GET by tag, {conns} conns, {wrk}s",
    "s3_mget_p99": "PostgreSQL + Garage: manifest GET by tag, p99",
}

UNITS = {
    "push": "MB/s", "pull": "MB/s", "pull_again": "MB/s", "pull_cold": "MB/s", "chunked": "MB/s", "mget": "req/s", "mget_p99": "ms ↓", "head": "req/s",
    "referrers": "ms ↓", "mput": "manifests/s", "post_p50": "ms ↓", "post_p99": "ms ↓", "post_rps": "req/s",
    "forhost_p99": "ms ↓", "forhost_p50": "ms ↓", "forhost_rps": "req/s",
    "forhost_paced_p99": "ms ↓", "forhost_paced_rps": "req/s", "startup": "s ↓", "startup_cold": "s ↓",
    "startup_open": "ms ↓", "pg_startup": "s ↓", "pg_startup_cold": "s ↓", "pg_startup_open": "ms ↓",
    "rss": "MiB ↓",
    "s3_push": "MB/s", "s3_pull": "MB/s", "s3_pull_again": "MB/s", "s3_chunked": "MB/s", "s3_mget": "req/s", "s3_mget_p99": "ms ↓",
}


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit.startswith("MB/s") or unit.startswith("req/s") or unit.startswith("manifests/s"):
        return f"{v:,.0f}"
    if unit.startswith("s"):
        return f"{v:.3f}" if v < 10 else f"{v:.2f}"
    if unit.startswith("MiB"):
        return f"{v:.1f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def targets(res):
    """(workload, target text, met?) from the issue."""
    med = res.median
    out = {}

    def ratio(w):
        a, b = med(w, BPF), med(w, DIST)
        return a / b if a is not None and b else None

    p, r = med("push", BPF), ratio("push")
    out["push"] = ("≥ 4× and ≥ 1,200 MB/s", None if p is None or r is None else (r >= 4 and p >= 1200))
    p, r = med("pull", BPF), ratio("pull")
    out["pull"] = ("≥ 1.1× and ≥ 2,600 MB/s", None if p is None or r is None else (r >= 1.1 and p >= 2600))
    r = ratio("chunked")
    out["chunked"] = ("≥ 3×", None if r is None else r >= 3)
    v = med("post_p50", BPF)
    out["post_p50"] = ("≤ 15 ms", None if v is None else v <= 15)
    v = med("post_p99", BPF)
    out["post_p99"] = ("≤ 50 ms", None if v is None else v <= 50)
    r = ratio("mget")
    out["mget"] = ("≥ 15×", None if r is None else r >= 15)
    v = med("rss", BPF)
    out["rss"] = ("≤ 24 MiB", None if v is None else v <= 24)
    for w in ("startup_cold", "startup", "pg_startup_cold", "pg_startup"):
        v = med(w, BPF)
        out[w] = ("≤ 1 s", None if v is None else v <= 1)
    v = med("forhost_p99", BPF)
    out["forhost_p99"] = ("≤ 5 ms", None if v is None else v <= 5)
    v = med("forhost_paced_p99", BPF)
    out["forhost_paced_p99"] = ("≤ 5 ms", None if v is None else v <= 5)
    for w in ("s3_push", "s3_pull", "s3_pull_again", "s3_chunked", "s3_mget"):
        r = ratio(w)
        out[w] = ("≥ 2×", None if r is None else r >= 2)
    return out


def render(res, sizes, info, args, elapsed, meta, ceilings):
    fill = dict(
        blob=sizes.human(sizes.blob), chunk=sizes.human(sizes.chunk), conns=sizes.conns, wrk=sizes.wrk_secs,
        refs=f"{sizes.referrers:,}", gets=sizes.referrer_gets, post=sizes.human(sizes.post_bytes),
        pc=sizes.post_clients, posts=sizes.posts, fc=sizes.forhost_clients,
        assoc=f"{meta['associations']:,}" if meta else "?", arts=f"{meta['artifacts']:,}" if meta else "?",
        rssblob=sizes.human(sizes.rss_blob), reps=args.reps,
    )
    tg = targets(res)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    L = []
    L.append("# bpf-registry vs CNCF distribution 2.8.2")
    L.append("")
    if sizes.quick:
        L.append("**Quick run (`--quick`): small sizes and short durations, for checking the benchmark itself; "
                 "the numbers are not comparable with the targets.**")
        L.append("")
    L.append(f"- date: {now}")
    L.append(f"- machine: `nproc` {info['nproc_cmd']}, CPU {info['cpu']}, kernel {info['kernel']}, {info['mem']}, "
             f"data dirs on {' '.join(info['fs']) if isinstance(info['fs'], list) else info['fs']}")
    L.append(f"- bpf-registry: release build of {info['commit']}, `BPF_REGISTRY_LOG_LEVEL=WARN`")
    L.append(f"- distribution: {info['distribution']} (`docker-registry serve`, filesystem storage, "
             "inmemory blob descriptor cache, delete enabled, log level warn, access log off)")
    L.append("- PostgreSQL + Garage rows: bpf-registry with `BPF_REGISTRY_METADATA=postgres://` (a fresh "
             "database) and `BPF_REGISTRY_BLOB_STORE=s3://` on a one-node Garage 2.5.0 on loopback; distribution "
             "with its S3 driver on the same Garage and bucket (another prefix), redirects off, inmemory "
             "blob descriptor cache")
    L.append(f"- clients: {info['wrk']}, ApacheBench {info['ab']}, {info['curl']}, Python {info['python']} (http.client / requests)")
    total = ""
    started = os.environ.get("BPF_BENCH_STARTED")
    if started:
        try:
            total = f" ({(time.time() - float(started)) / 60:.1f} min with installing and `cargo build --release`)"
        except ValueError:
            pass
    L.append(f"- {args.reps} repetition{'s' if args.reps != 1 else ''}, alternating which registry goes first; "
             f"every cell is the median; the benchmark took {elapsed / 60:.1f} min{total}")
    L.append(f"- load average (1 min) before / after: {info.get('load_before', '?')} / {loadavg()}")
    L.append("- MB = 10^6 bytes; ↓ = lower is better; ratio = bpf-registry / distribution")
    L.append("")
    L.append("| workload | unit | bpf-registry | distribution 2.8.2 | ratio | target | met |")
    L.append("| --- | --- | ---: | ---: | ---: | --- | --- |")
    order = ["push", "pull", "pull_again", "pull_cold", "chunked", "mget", "mget_p99", "head", "referrers", "mput",
             "post_p50", "post_p99", "post_rps", "forhost_p99", "forhost_p50", "forhost_rps",
             "forhost_paced_p99", "forhost_paced_rps",
             "startup_cold", "startup", "startup_open", "pg_startup_cold", "pg_startup", "pg_startup_open",
             "rss",
             "s3_push", "s3_pull", "s3_pull_again", "s3_chunked", "s3_mget", "s3_mget_p99"]
    for w in order:
        unit = UNITS[w]
        a, b = res.median(w, BPF), res.median(w, DIST)
        has_dist = (w, DIST) in res.values
        ratio = f"{a / b:.2f}×" if a is not None and b else ("n/a" if has_dist else "")
        t, met = tg.get(w, ("", None))
        mtxt = "" if not t else ("**met**" if met else ("not met" if met is not None else "?"))
        L.append(f"| {W[w].format(**fill)} | {unit} | {fmt(a, unit)} | "
                 f"{fmt(b, unit) if has_dist else '—'} | {ratio} | {t} | {mtxt} |")
    L.append("")
    if ceilings:
        def cm(k):
            return fmt(statistics.median(ceilings[k]), "MB/s") if ceilings[k] else "n/a"
        L.append(f"Ceilings measured in the same run ({fill['blob']}, medians): the same push client against a "
                 f"trivial loopback sink in another process {cm('push')} MB/s; curl pulling from that sink "
                 f"{cm('pull')} MB/s; one write + fsync of a file of that size on the data dirs' filesystem "
                 f"{cm('disk')} MB/s (a reference for the disk, not a strict bound: a server can overlap "
                 "writing with receiving) "
                 f"(every repetition: {', '.join(fmt(v, 'MB/s') for v in ceilings['disk'])}); "
                 f"the same with direct I/O (O_DIRECT, 1 MiB writes from aligned memory, then fsync: the disk "
                 f"without the page cache) {cm('disk_direct')} MB/s; "
                 f"sha256 on one core (Python hashlib) {cm('sha256')} MB/s. "
                 "A registry number close to one of these is bound by it, not by the registry.")
        L.append("")
        rel = []
        for w, label, keys in (("push", "monolithic push", ("push", "disk", "disk_direct")),
                               ("chunked", "chunked push", ("push", "disk", "disk_direct")),
                               ("pull", "pull", ("pull",))):
            for reg in (BPF, DIST):
                v = res.median(w, reg)
                if v is None:
                    continue
                parts = []
                for k in keys:
                    if ceilings[k]:
                        c = statistics.median(ceilings[k])
                        name = {"push": "client", "disk": "write + fsync", "disk_direct": "direct write + fsync"}.get(k, "curl")
                        parts.append(f"{100 * v / c:.0f} % of the {name} ceiling")
                if parts:
                    rel.append(f"{reg} {label}: " + ", ".join(parts))
        if rel:
            L.append("Relative to the ceilings: " + "; ".join(rel) + ".")
            L.append("")
    L.append("## CPU used during each workload (median % of one core over the timed window; "
             f"{info['nproc_cmd']} cores = {100 * int(info['nproc_cmd'] or 1)} %)")
    L.append("")
    L.append("\"others\" is the user + system CPU of everything else on the machine in the same window (other "
             "users of this shared machine, kernel threads; interrupt time is not counted): a high value means "
             "that repetition was disturbed.")
    L.append("")
    L.append("| workload | bpf-registry server | its client | others | distribution server | its client | others |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for w in order:
        if (w, BPF) not in res.cpu and (w, DIST) not in res.cpu:
            continue
        cells = []
        for reg in (BPF, DIST):
            rows = res.cpu.get((w, reg), [])
            for i in range(3):
                col = [x[i] for x in rows if x[i] is not None and not math.isnan(x[i])]
                cells.append(f"{statistics.median(col):.0f} %" if col else "—")
        L.append(f"| {W[w].format(**fill)} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("## Every repetition")
    L.append("")
    for w in order:
        for reg in (BPF, DIST):
            vals = res.values.get((w, reg))
            if vals:
                unit = "" if all(v is None for v in vals) else " " + UNITS[w].replace(" ↓", "")
                L.append(f"- {W[w].format(**fill).strip()} — {reg}: "
                         + ", ".join(fmt(v, UNITS[w]) for v in vals) + unit)
    for k, v in res.extra.items():
        L.append(f"- {k}: {v}")
    L.append("")
    if NOTES or ERRORS:
        L.append("## Notes")
        L.append("")
        for n in NOTES:
            L.append(f"- {n}")
        for e in ERRORS:
            L.append(f"- ERROR: {e}")
        L.append("")
    return "\n".join(L)


# --------------------------------------------------------------------------
# main


def main():
    ap = argparse.ArgumentParser(description="bpf-registry vs distribution benchmark")
    ap.add_argument("--quick", action="store_true", help="small sizes, short durations")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3, 2 with --quick)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "bpf-registry"))
    ap.add_argument("--out", default=None, help="markdown output (default results/latest.md or latest-quick.md)")
    ap.add_argument("--cache", default=os.environ.get("BPF_BENCH_CACHE",
                                                      os.path.expanduser("~/.cache/bpf-registry-bench")))
    ap.add_argument("--keep", action="store_true", help="keep the temporary data dirs and logs")
    ap.add_argument("--skip", default="", help="comma-separated: oci,shared,post,store,pg-startup,rss (for debugging)")
    args = ap.parse_args()
    if args.reps is None:
        args.reps = 2 if args.quick else 3
    args.reps = max(1, min(args.reps, 20))
    skip = set(filter(None, args.skip.split(",")))
    sizes = Sizes(args.quick)
    check(os.access(args.binary, os.X_OK), f"no release binary at {args.binary}")
    check(all(shutil.which(t) for t in ("docker-registry", "wrk", "ab", "curl")),
          "docker-registry, wrk, ab and curl are needed (bench.sh installs them)")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = tempfile.mkdtemp(prefix="bpf-bench-")
    log(f"workdir {workdir}; {args.reps} reps{' (quick)' if args.quick else ''}")
    info = machine()
    info["load_before"] = loadavg()
    res = Results()
    ceilings = {"push": [], "pull": [], "disk": [], "disk_direct": [], "sha256": []}
    meta = None
    try:
        # -- the generated store first (may take minutes the first time)
        if "store" not in skip:
            store_dir, meta = ensure_store(sizes, args.cache, args.binary)

        # -- workloads against both registries
        if "oci" not in skip or "post" not in skip:
            bpf = Registry(bpf_server(args.binary, workdir, fresh_dir(workdir, "bpf-data")).start())
            dist = Registry(dist_server(workdir, fresh_dir(workdir, "dist-data")).start())
            bpf.server.wait_ready()
            dist.server.wait_ready()
            log(f"bpf-registry on {bpf.base} (pid {bpf.server.proc.pid}), "
                f"distribution on {dist.base} (pid {dist.server.proc.pid})")
        if "oci" not in skip:
            blob = BigBlob(sizes.blob)
            for reg in (bpf, dist):
                ms, rate = reg.prepare(sizes)
                res.add("mput", reg.kind, rate, ms)
                log(f"{reg.kind}: prepared; {sizes.referrers} referrer manifests at {rate:.0f}/s")
            sink = Sink(blob.buf)
            try:
                for rep in range(args.reps):
                    order = [bpf, dist] if rep % 2 == 0 else [dist, bpf]
                    log(f"rep {rep + 1}/{args.reps}: order {order[0].kind}, {order[1].kind}")
                    d = blob.renew()
                    ceilings["sha256"].append(blob.hash_mbs)
                    t = push_monolithic(sink.base, "sink", blob.buf, d)
                    ceilings["push"].append(len(blob.buf) / t / MB)
                    ceilings["pull"].append(curl_pull(f"{sink.base}/sink", len(blob.buf)) / MB)
                    ceilings["disk"].append(disk_write_mbs(workdir, blob.buf))
                    direct = disk_direct_write_mbs(workdir, blob.buf)
                    if direct is not None:
                        ceilings["disk_direct"].append(direct)
                    log("  ceilings: client push {:.0f} MB/s, curl pull {:.0f} MB/s, disk write+fsync {:.0f} MB/s, "
                        "sha256 {:.0f} MB/s".format(*(ceilings[k][-1] for k in ("push", "pull", "disk", "sha256"))))
                    steps = [
                        ("push", lambda r: w_push_mono(r, blob, res, "push")),
                        ("pull", lambda r: w_pull(r, blob, res, "pull")),
                        ("pull again", lambda r: w_pull(r, blob, res, "pull_again")),
                        ("pull cold", lambda r: w_pull_cold(r, blob, res, "pull_cold")),
                        ("chunked", lambda r: w_push_chunked(r, blob, res, "chunked", sizes.chunk)),
                        ("manifest GET", lambda r: w_manifest_get(r, res, ("mget", "mget_p99"), sizes)),
                        ("blob HEAD", lambda r: w_blob_head(r, res, "head", sizes)),
                        ("referrers", lambda r: w_referrers(r, res, "referrers", sizes)),
                    ]
                    for label, fn in steps:
                        for reg in order:
                            try:
                                out = fn(reg)
                                log(f"  {label:13s} {reg.kind:13s} {out}")
                            except Exception as e:  # noqa: BLE001 - record it, go on with the next workload
                                error(f"rep {rep + 1} {label} {reg.kind}: {e!r}")
                            check(reg.server.alive(), f"{reg.kind} died; log {reg.server.log_path}: "
                                  + reg.server.log_tail())
            finally:
                sink.stop()
        if "shared" not in skip:
            run_shared(args, sizes, workdir, res)
        if "post" not in skip:
            for rep in range(args.reps):
                try:
                    out = w_post_artifacts(bpf, res, ("post_p50", "post_p99", "post_rps"), sizes, rep)
                    log(f"  POST /artifacts rep {rep + 1}: {out}")
                except Exception as e:  # noqa: BLE001 - record it, go on with the next workload
                    error(f"rep {rep + 1} POST /artifacts: {e}")
        if "oci" not in skip or "post" not in skip:
            for reg in (bpf, dist):
                reg.server.stop()
                shutil.rmtree(reg.server.data_dir, ignore_errors=True)

        # -- start-up and /for-host on the generated store (bpf-registry only)
        if "store" not in skip:
            store = os.path.join(store_dir, "store")
            startup_runs("SQLite", ("startup_cold", "startup", "startup_open"), args.binary, workdir, store, meta,
                         args.reps, res)
            if "pg-startup" not in skip:
                try:
                    startup_postgres(args, workdir, store, meta, res)
                except Exception as e:  # noqa: BLE001 - record it, go on with the next workload
                    error(f"PostgreSQL start-up: {e}")
            hosts = meta["hosts"]
            lua = os.path.join(workdir, "forhost.lua")
            with open(lua, "w") as f:
                f.write(f"math.randomseed({random.randrange(1 << 30)})\n"
                        "request = function()\n"
                        f"  return wrk.format(\"GET\", string.format(\"/artifacts/for-host/host-%04d\", "
                        f"math.random(0, {hosts - 1})))\n"
                        "end\n")
            paced = os.path.join(workdir, "forhost-paced.lua")
            with open(lua) as f, open(paced, "w") as g:
                g.write(f.read() + "delay = function()\n  return 2\nend\n")
            s = bpf_server(args.binary, workdir, store, level="WARN").start()
            try:
                s.wait_ready()
                call(conn_for(s.base), "GET", "/artifacts/for-host/host-0000", expect=200)  # warm
                for rep in range(args.reps):
                    with Measure(s) as ms:
                        w = run_wrk(s.base + "/", sizes.forhost_clients, sizes.forhost_secs, script=lua)
                    res.add("forhost_p99", BPF, w["p99"], ms)
                    res.add("forhost_p50", BPF, w["p50"])
                    res.add("forhost_rps", BPF, w["rps"])
                    log(f"  for-host rep {rep + 1}: {w['requests']} requests, {w['rps']:.0f} req/s, "
                        f"p50 {w['p50']:.2f} ms, p99 {w['p99']:.2f} ms")
                    check(w["requests"] >= 2000, f"for-host: only {w['requests']} requests")
                    # The closed loop above saturates both cores, the load generator's included, so
                    # its tail is partly the scheduler's; paced, each connection waits 2 ms after an
                    # answer (as agents that poll do), which offers about the saturated rate of before.
                    w = run_wrk(s.base + "/", sizes.forhost_clients, sizes.forhost_secs, script=paced)
                    res.add("forhost_paced_p99", BPF, w["p99"])
                    res.add("forhost_paced_rps", BPF, w["rps"])
                    log(f"  for-host paced rep {rep + 1}: {w['requests']} requests, {w['rps']:.0f} req/s, "
                        f"p50 {w['p50']:.2f} ms, p99 {w['p99']:.2f} ms")
            except Exception as e:  # noqa: BLE001 - record it, go on with the next workload
                error(f"for-host: {e}")
            finally:
                s.stop()

        # -- peak RSS, fresh servers on a small (empty) store
        if "rss" not in skip:
            block = os.urandom(8 * MiB)
            for rep in range(args.reps):
                for kind in ((BPF, DIST) if rep % 2 == 0 else (DIST, BPF)):
                    data = fresh_dir(workdir, "rss-data")
                    srv = bpf_server(args.binary, workdir, data) if kind == BPF else dist_server(workdir, data)
                    try:
                        r = w_rss(srv, sizes, block)
                        res.add("rss", kind, r["peak"])
                        res.extra.setdefault(f"RSS detail {kind} (idle / after push / after pull MiB, "
                                             "push / pull MB/s)", []).append(
                            f"{r['idle']:.1f}/{r['after_push']:.1f}/{r['peak']:.1f}, "
                            f"{r['push_mbs']:.0f}/{r['pull_mbs']:.0f}")
                        log(f"  RSS rep {rep + 1} {kind}: idle {r['idle']:.1f} MiB, after push "
                            f"{r['after_push']:.1f}, peak {r['peak']:.1f} MiB (push {r['push_mbs']:.0f} MB/s "
                            f"streamed, pull {r['pull_mbs']:.0f} MB/s)")
                    except Exception as e:  # noqa: BLE001 - record it, go on with the next workload
                        error(f"RSS rep {rep + 1} {kind}: {e}")
                    finally:
                        srv.stop()
                        shutil.rmtree(data, ignore_errors=True)
            for k in list(res.extra):
                res.extra[k] = "; ".join(res.extra[k])
    except BenchError as e:
        error(str(e))
    except KeyboardInterrupt:
        error("interrupted")
    except Exception as e:  # noqa: BLE001
        error(f"{type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        for s in list(RUNNING):
            s.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - T0
    md = render(res, sizes, info, args, elapsed, meta, ceilings if ceilings["push"] else None)
    out = args.out or os.path.join(HERE, "results", "latest-quick.md" if args.quick else "latest.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(md + "\n")
    raw = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": info, "quick": args.quick, "reps": args.reps, "elapsed_s": round(elapsed, 1),
        "values": {f"{w}/{r}": v for (w, r), v in res.values.items()},
        "cpu_percent": {f"{w}/{r}": v for (w, r), v in res.cpu.items()},
        "client_ceiling_mbs": ceilings, "store": meta and {k: meta[k] for k in meta if k != "samples"},
        "errors": ERRORS, "notes": NOTES,
    }
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(raw, f, indent=1, default=str)
    print()
    print(md)
    print()
    log(f"wrote {out} (and .json); {len(ERRORS)} errors")
    return 1 if ERRORS else 0


if __name__ == "__main__":
    sys.exit(main())
