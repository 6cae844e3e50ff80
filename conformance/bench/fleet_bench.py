#!/usr/bin/env python3
"""fleet_bench.py - load on the fleet API (issue 13) of a running bpf-registry.

    python3 conformance/bench/fleet_bench.py --url http://127.0.0.1:PORT --pid PID [--quick]

(or `bash conformance/bench/bench.sh --fleet [--quick]`, which builds the
release binary, starts it with the settings below and runs this.)

Against the server at --url (a release build on a fresh data dir, started
with BPF_REGISTRY_MAX_CONNECTIONS and BPF_REGISTRY_MAX_WATCHERS above
--watchers and an open-file limit to match; --pid is its process, for RSS and
CPU from /proc/<pid>):

 1. setup: registers --hosts hosts with labels (env, zone, rack, role,
    canary on some, fleet=all on every one; 90 % x86_64, kernels 5.4 to 6.8,
    BTF on 6 of 7) with PUT /hosts, creates --artifacts artifacts with
    POST /artifacts (small payloads; 50 names x versions x {x86_64, aarch64},
    some with requirements), and --selectors selectors of mixed selectivity
    (the last one, `fleet=all`, on `bench/watched`, matches every host);
    each step's rate is reported;
 2. GET /hosts/{random host}/desired at --conns connections for --secs:
    requests/s, p50, p99;
 3. PUT /hosts/{random host}/deployments/{random artifact} at --conns
    connections (or at each of --deploy-conns) for --secs: requests/s, p50,
    p99;
 4. --watchers concurrent long polls, one per host: asyncio raw HTTP/1.1
    connections, each primed with a plain GET of its host's desired answer
    (for the ETag), then `GET ...?wait=60s` with If-None-Match; the server's
    VmRSS before and while they are held; then one write that changes every
    answer (a new version of `bench/watched`) and the time from sending it
    until every watcher got its 200 (and the p50/p99 of each watcher's own
    wait after the write). A watcher answered 304 (its wait ran out while
    the others connected, or just as the write went out) asks again with
    the same ETag, and is counted.

`--only deploy` (a comma-separated subset of desired,deploy,watch) runs
only those steps after the setup.

Steps 2 and 3 use `wrk` (with a Lua script picking the host / artifact) when
it is installed (bench.sh installs it), else a threaded Python client with
keep-alive connections; the table says which. Standard library only.
Prints a markdown table (and writes it to --out when given). Not a test: the
exit status is 1 only when something errored.
"""

import argparse
import asyncio
import base64
import http.client
import json
import math
import os
import queue
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

CLK_TCK = os.sysconf("SC_CLK_TCK")
T0 = time.monotonic()
ERRORS = []
NOTES = []


def log(msg):
    print(f"[fleet {time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def error(msg):
    ERRORS.append(msg)
    log("ERROR: " + msg)


class BenchError(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise BenchError(msg)


def pct(values, p):
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, math.ceil(p / 100 * len(s)) - 1)
    return s[k]


# --------------------------------------------------------------------------
# the server process (read only: we did not start it here)


class Proc:
    def __init__(self, pid):
        self.pid = pid

    def status_kib(self, field):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise BenchError(f"no {field} in /proc/{self.pid}/status")

    def cpu(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def alive(self):
        return os.path.exists(f"/proc/{self.pid}")


class CpuWindow:
    """Server CPU as % of one core over a block."""

    def __init__(self, proc):
        self.proc = proc

    def __enter__(self):
        self.c0, self.t0 = self.proc.cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.percent = 100 * (self.proc.cpu() - self.c0) / self.wall if self.wall > 0 else float("nan")
        return False


# --------------------------------------------------------------------------
# HTTP (http.client, keep-alive)


class Client:
    def __init__(self, base, timeout=120):
        u = urllib.parse.urlsplit(base)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.c = None

    def request(self, method, path, body=None, headers=None):
        h = dict(headers or {})
        if body is not None:
            h.setdefault("Content-Type", "application/json")
        elif method in ("POST", "PUT"):
            h["Content-Length"] = "0"
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.c.request(method, path, body=body, headers=h)
                r = self.c.getresponse()
                data = r.read()
                return r.status, r, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # a keep-alive connection the server closed: once more on a new one
                self.c.close()
                self.c = None
                if attempt:
                    raise
        raise BenchError("unreachable")

    def json(self, method, path, obj=None, expect=(200, 201)):
        body = json.dumps(obj, separators=(",", ":")).encode() if obj is not None else None
        status, _, data = self.request(method, path, body)
        if status not in expect:
            raise BenchError(f"{method} {path[:100]} -> {status} {data[:300]!r}")
        return json.loads(data) if data else None

    def close(self):
        if self.c is not None:
            self.c.close()


def parallel(base, items, fn, threads):
    """Runs fn(client, item) for every item on `threads` keep-alive
    connections; returns (results in item order, seconds)."""
    q = queue.Queue()
    for i, it in enumerate(items):
        q.put((i, it))
    out = [None] * len(items)
    failures = []

    def worker():
        c = Client(base)
        try:
            while True:
                try:
                    i, it = q.get_nowait()
                except queue.Empty:
                    return
                try:
                    out[i] = fn(c, it)
                except Exception as e:  # noqa: BLE001 - reported below
                    failures.append(f"{it!r:.80}: {e}")
        finally:
            c.close()

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    secs = time.perf_counter() - t0
    check(not failures, f"{len(failures)} requests failed, first: {failures[:3]}")
    return out, secs


# --------------------------------------------------------------------------
# the fleet


ENVS = ["prod", "staging", "dev"]
ROLES = ["edge", "core", "db"]
KERNELS = ["5.4.0-150-generic", "5.15.0-91-generic", "6.1.0-13-amd64", "6.8.0-45-generic"]
NAMES = 50


def host_id(i):
    return f"host-{i:05d}"


def host_facts(i):
    labels = {
        "env": ENVS[i % 3],
        "zone": f"z{i % 10}",
        "rack": f"r{i % 100}",
        "role": ROLES[(i // 3) % 3],
        "fleet": "all",
    }
    if i % 20 == 0:
        labels["canary"] = "true"
    return {
        "architecture": "aarch64" if i % 10 == 9 else "x86_64",
        "kernel_release": KERNELS[(i // 7) % len(KERNELS)],
        "btf": i % 7 != 0,
        "labels": labels,
        "agent_version": "1.4.2",
    }


def artifact_plan(total):
    """(name, version, arch, requirements) for `total` artifacts: 50 names,
    versions 1.0.0, 1.1.0, ... and both architectures per version."""
    per_name = max(1, total // (NAMES * 2))
    plan = []
    for v in range(per_name):
        for n in range(NAMES):
            for arch in ("x86_64", "aarch64"):
                req = None
                if v == per_name - 1 and n % 5 == 0:
                    req = {"min_kernel": "6.0"}
                elif v == per_name - 1 and n % 5 == 1:
                    req = {"btf": "required"}
                plan.append((f"bench/prog-{n:02d}", f"1.{v}.0", arch, req))
    return plan[:total]


def create_body(name, version, arch, req, salt=""):
    data = f"{name} {version} {arch} {salt}".encode() * 2
    b = {"name": name, "version": version, "type": "map", "architecture": arch,
         "description": "fleet bench", "kernel_version": "5.15.0",
         "data": base64.b64encode(data).decode()}
    if req:
        b["requirements"] = req
    return b


def selector_plan(count):
    """count - 1 selectors of mixed selectivity, then `fleet=all`."""
    sels = []
    for k in range(max(0, count - 1)):
        kind = k % 4
        if kind == 0:
            s = f"zone=z{k % 10},env=prod"  # ~3 %
        elif kind == 1:
            s = f"rack in (r{k % 100},r{(k + 1) % 100},r{(k + 2) % 100})"  # 3 %
        elif kind == 2:
            s = f"env={ENVS[k % 3]},!canary"  # ~32 %
        else:
            s = f"role notin (db),zone!=z{k % 10}"  # ~60 %
        sels.append((f"bench/prog-{k % NAMES:02d}", s))
    return sels


def setup(args):
    res = {}
    hosts = list(range(args.hosts))
    _, secs = parallel(args.url, hosts, lambda c, i: c.json("PUT", f"/hosts/{host_id(i)}", host_facts(i)),
                       args.conns)
    res["hosts"] = (len(hosts), secs)
    log(f"registered {len(hosts)} hosts in {secs:.1f}s ({len(hosts) / secs:.0f}/s)")

    # One task per (name, version): its architectures one after the other
    # (the second makes the version an image index).
    plan = artifact_plan(args.artifacts)
    groups = {}
    for name, version, arch, req in plan:
        groups.setdefault((name, version), []).append((arch, req))

    def create_group(c, key):
        name, version = key
        return [(arch, c.json("POST", "/artifacts", create_body(name, version, arch, req), expect=(201,))["id"])
                for arch, req in groups[key]]
    keys = list(groups)
    out, secs = parallel(args.url, keys, create_group, args.conns)
    ids = {}  # name -> [(version, arch, id)] oldest first
    for (name, version), made in zip(keys, out):
        for arch, aid in made:
            ids.setdefault(name, []).append((version, arch, aid))
    res["artifacts"] = (len(plan), secs)
    log(f"created {len(plan)} artifacts in {secs:.1f}s ({len(plan) / secs:.0f}/s)")

    c = Client(args.url)
    watched = c.json("POST", "/artifacts", create_body("bench/watched", "1.0.0", "x86_64", None), expect=(201,))
    watched_arm = c.json("POST", "/artifacts", create_body("bench/watched", "1.0.0", "aarch64", None),
                         expect=(201,))
    c.close()
    sels = [(ids[name][-1][2], s) for name, s in selector_plan(args.selectors)]
    sels.append((watched["id"], "fleet=all"))
    _, secs = parallel(args.url, sels, lambda c, it: c.json("POST", f"/artifacts/{it[0]}/selectors",
                                                             {"selector": it[1]}), args.conns)
    res["selectors"] = (len(sels), secs)
    log(f"created {len(sels)} selectors in {secs:.1f}s ({len(sels) / secs:.0f}/s)")
    all_ids = [aid for made in ids.values() for _, _, aid in made]
    res["ids"] = all_ids
    res["watched"] = (watched["id"], watched_arm["id"])

    c = Client(args.url)
    sample = c.json("GET", f"/hosts/{host_id(1)}/desired")
    c.close()
    res["sample_entries"] = (len(sample["artifacts"]), len(sample["excluded"]))
    check(any(a["name"] == "bench/watched" for a in sample["artifacts"]),
          f"host-00001's desired does not hold bench/watched: {json.dumps(sample)[:300]}")
    return res


# --------------------------------------------------------------------------
# load: wrk with Lua, or Python threads


def wrk_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[unit]


def run_wrk(url, conns, secs, script):
    argv = ["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{secs}s", "--latency", "--timeout", "10s",
            "-s", script, url]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
    out = p.stdout
    check(p.returncode == 0, f"wrk exited {p.returncode}: {p.stderr.strip()[:300]}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    check(m, f"no Requests/sec in wrk output: {out[:500]}")
    res = {"rps": float(m.group(1))}
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    for pc in ("50", "99"):
        m = re.search(rf"^\s*{pc}%\s+(\S+)\s*$", out, re.M)
        res[f"p{pc}"] = wrk_ms(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    check(not m, f"wrk: {m.group(1) if m else 0} non-2xx responses")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    check(not m or sum(int(x) for x in m.groups()) == 0, f"wrk: {m.group(0) if m else ''}")
    check(res["requests"] > 0, "wrk: no request completed")
    return res


def run_threads(base, conns, secs, make_request):
    """conns threads, each a keep-alive connection, for secs seconds."""
    lat = [[] for _ in range(conns)]
    bad = []
    deadline = time.perf_counter() + secs

    def worker(k):
        c = Client(base)
        rng = random.Random(k)
        try:
            while time.perf_counter() < deadline:
                method, path, body = make_request(rng)
                t = time.perf_counter()
                status, _, data = c.request(method, path, body)
                lat[k].append((time.perf_counter() - t) * 1000)
                if status != 200:
                    bad.append(f"{method} {path} -> {status} {data[:200]!r}")
                    return
        finally:
            c.close()
    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    check(not bad, f"{len(bad)} failed requests, first: {bad[:2]}")
    all_lat = [x for l in lat for x in l]
    return {"rps": len(all_lat) / wall, "requests": len(all_lat), "p50": pct(all_lat, 50), "p99": pct(all_lat, 99)}


def load_desired(args, workdir, proc):
    n = args.hosts
    if args.client == "wrk":
        lua = os.path.join(workdir, "desired.lua")
        with open(lua, "w") as f:
            f.write(f"math.randomseed({random.randrange(1 << 30)})\n"
                    "request = function()\n"
                    f"  return wrk.format(\"GET\", string.format(\"/hosts/host-%05d/desired\", math.random(0, {n - 1})))\n"
                    "end\n")
        with CpuWindow(proc) as cpu:
            r = run_wrk(args.url + "/", args.conns, args.secs, lua)
    else:
        with CpuWindow(proc) as cpu:
            r = run_threads(args.url, args.conns, args.secs,
                            lambda rng: ("GET", f"/hosts/{host_id(rng.randrange(n))}/desired", None))
    r["cpu"] = cpu.percent
    return r


def load_deployments(args, workdir, proc, ids, conns):
    n = args.hosts
    states = ["loaded", "failed", "unloaded"]
    if args.client == "wrk":
        lua = os.path.join(workdir, "deploy.lua")
        with open(lua, "w") as f:
            f.write(f"math.randomseed({random.randrange(1 << 30)})\n")
            f.write("ids = {" + ",".join(f'"{i}"' for i in ids[:200]) + "}\n")
            f.write("bodies = {" + ",".join(
                "'" + json.dumps({"state": s, "message": "bench", "attach_point": "eth0/xdp"}) + "'"
                for s in states) + "}\n")
            f.write("headers = {[\"Content-Type\"] = \"application/json\"}\n"
                    "request = function()\n"
                    f"  local path = string.format(\"/hosts/host-%05d/deployments/%s\", math.random(0, {n - 1}), "
                    "ids[math.random(#ids)])\n"
                    "  return wrk.format(\"PUT\", path, headers, bodies[math.random(#bodies)])\n"
                    "end\n")
        with CpuWindow(proc) as cpu:
            r = run_wrk(args.url + "/", conns, args.secs, lua)
    else:
        def make(rng):
            body = json.dumps({"state": rng.choice(states), "message": "bench", "attach_point": "eth0/xdp"}).encode()
            return "PUT", f"/hosts/{host_id(rng.randrange(n))}/deployments/{rng.choice(ids[:200])}", body
        with CpuWindow(proc) as cpu:
            r = run_threads(args.url, conns, args.secs, make)
    r["cpu"] = cpu.percent
    return r


# --------------------------------------------------------------------------
# watchers: asyncio raw HTTP/1.1


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
    return status, headers, body


class WatchState:
    def __init__(self, n):
        self.n = n
        self.armed = 0
        self.all_armed = asyncio.Event()
        self.written_at = None  # perf_counter when the write was sent
        self.woke = []  # seconds from the write to each 200
        self.statuses = {}
        self.rearmed = 0
        self.failures = []

    def settled(self):
        """Every watcher armed or failed: the write may go."""
        if self.armed + len(self.failures) >= self.n:
            self.all_armed.set()


async def watcher(host, port, path, wait, st, connect_gate):
    req_head = f"Host: {host}:{port}\r\nUser-Agent: fleet-bench\r\n"
    writer = None
    try:
        async with connect_gate:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\n{req_head}\r\n".encode())
            status, headers, _ = await read_response(reader)
            if status != 200 or "etag" not in headers:
                raise BenchError(f"prime GET {path}: {status} {headers}")
            etag = headers["etag"]
            wait_req = (f"GET {path}?wait={wait} HTTP/1.1\r\n{req_head}If-None-Match: {etag}\r\n\r\n").encode()
            writer.write(wait_req)
            await writer.drain()
        st.armed += 1
        st.settled()
        while True:
            status, headers, _ = await read_response(reader)
            now = time.perf_counter()
            if status == 304:
                # The wait ran out (while the others connected, or just as
                # the write went out): ask again with the same ETag; after
                # the write that answers 200 at once.
                st.rearmed += 1
                writer.write(wait_req)
                await writer.drain()
                continue
            st.statuses[status] = st.statuses.get(status, 0) + 1
            if status == 200 and st.written_at is not None:
                st.woke.append(now - st.written_at)
            break
    except Exception as e:  # noqa: BLE001 - counted and reported
        st.failures.append(f"{path}: {type(e).__name__}: {e}")
        st.settled()
    finally:
        if writer is not None:
            writer.close()


def write_blocking(base, body):
    c = Client(base)
    try:
        return c.json("POST", "/artifacts", body, expect=(201,))
    finally:
        c.close()


async def watchers_run(args, proc):
    u = urllib.parse.urlsplit(args.url)
    n = args.watchers
    st = WatchState(n)
    gate = asyncio.Semaphore(256)  # connects in flight (the listen backlog)
    rss_before = proc.status_kib("VmRSS")
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(watcher(u.hostname, u.port, f"/hosts/{host_id(i % args.hosts)}/desired",
                                         args.wait, st, gate))
             for i in range(n)]
    try:
        await asyncio.wait_for(st.all_armed.wait(), timeout=300)
    except asyncio.TimeoutError:
        raise BenchError(f"only {st.armed} of {n} watchers armed after 300 s; failures {st.failures[:3]}") from None
    armed_secs = time.perf_counter() - t0
    log(f"{st.armed} watchers armed in {armed_secs:.1f}s ({len(st.failures)} failed)")
    await asyncio.sleep(2)  # let the server read every wait request
    answered_early = sum(st.statuses.values())
    rss_held = proc.status_kib("VmRSS")
    log(f"server VmRSS {rss_before / 1024:.1f} MiB before, {rss_held / 1024:.1f} MiB with the watchers held")
    loop = asyncio.get_running_loop()
    st.written_at = time.perf_counter()
    await loop.run_in_executor(None, write_blocking, args.url,
                               create_body("bench/watched", "1.1.0", "x86_64", None, salt="wake"))
    acked = time.perf_counter() - st.written_at
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    except asyncio.TimeoutError:
        pass
    all_secs = max(st.woke) if st.woke else float("nan")
    return {
        "watchers": n, "armed": st.armed, "armed_secs": armed_secs, "failures": st.failures,
        "rss_before": rss_before, "rss_held": rss_held, "statuses": st.statuses,
        "answered_early": answered_early, "rearmed": st.rearmed, "write_ack": acked,
        "woke": len(st.woke), "all_secs": all_secs, "p50": pct(st.woke, 50), "p99": pct(st.woke, 99),
    }


def raise_nofile(need):
    """Raises the soft open-file limit towards `need` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            NOTES.append(f"could not raise RLIMIT_NOFILE to {target}: {e}")
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------
# report


def render(args, res):
    L = []
    L.append(f"## Fleet API benchmark ({'quick' if args.quick else 'full'})")
    L.append("")
    L.append(f"- server: {args.url} (pid {args.pid}); load client: "
             + ("wrk (Lua picks the host / artifact)" if args.client == "wrk"
                else "Python threads, one keep-alive http.client connection each"))
    L.append(f"- fleet: {args.hosts:,} hosts, {args.artifacts:,} artifacts, {args.selectors} selectors; "
             f"host-00001's desired answer: {res['setup']['sample_entries'][0]} artifacts, "
             f"{res['setup']['sample_entries'][1]} excluded")
    L.append("")
    L.append("| measure | value |")
    L.append("| --- | --- |")
    for key, what in (("hosts", "PUT /hosts (setup)"), ("artifacts", "POST /artifacts (setup)"),
                      ("selectors", "POST selectors (setup)")):
        count, secs = res["setup"][key]
        L.append(f"| {what}, {args.conns} conns | {count:,} in {secs:.1f} s ({count / secs:,.0f}/s) |")
    rows = [("desired", "GET /hosts/{id}/desired", args.conns)]
    rows += [(f"deploy@{n}", "PUT /hosts/{id}/deployments/{artifact}", n) for n in args.deploy_conns]
    for key, what, conns in rows:
        if key.split("@")[0] not in args.only:
            continue
        r = res.get(key)
        if r:
            L.append(f"| {what}, {conns} conns, {args.secs} s | {r['rps']:,.0f} req/s, p50 {r['p50']:.2f} ms, "
                     f"p99 {r['p99']:.2f} ms (server CPU {r['cpu']:.0f} %) |")
        else:
            L.append(f"| {what} | error |")
    w = res.get("watch")
    if "watch" not in args.only:
        pass
    elif w:
        L.append(f"| `?wait={args.wait}` watchers held | {w['armed']:,} of {w['watchers']:,} armed in "
                 f"{w['armed_secs']:.1f} s; {len(w['failures'])} failed; {w['answered_early']} answered before "
                 f"the write, {w['rearmed']} re-armed after a 304 |")
        per = (w["rss_held"] - w["rss_before"]) / max(1, w["armed"])
        L.append(f"| server VmRSS before / with watchers held | {w['rss_before'] / 1024:.1f} MiB / "
                 f"{w['rss_held'] / 1024:.1f} MiB ({per:.1f} KiB per watcher) |")
        L.append(f"| one write → every watcher's 200 | {w['woke']:,} woke; last after {w['all_secs']:.2f} s "
                 f"(per watcher p50 {w['p50']:.2f} s, p99 {w['p99']:.2f} s; the write's own 201 after "
                 f"{w['write_ack'] * 1000:.0f} ms); statuses {dict(sorted(w['statuses'].items()))} |")
    else:
        L.append("| watchers | error |")
    if ERRORS:
        L.append("")
        L.append("Errors:")
        L.extend(f"- {e}" for e in ERRORS)
    if NOTES:
        L.append("")
        L.extend(f"- {n}" for n in NOTES)
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description="fleet API benchmark against a running bpf-registry")
    ap.add_argument("--url", required=True, help="http://127.0.0.1:PORT of a running server (fresh data dir)")
    ap.add_argument("--pid", type=int, required=True, help="the server's pid (VmRSS, CPU from /proc)")
    ap.add_argument("--quick", action="store_true", help="small sizes, 3 s load runs")
    ap.add_argument("--hosts", type=int)
    ap.add_argument("--artifacts", type=int)
    ap.add_argument("--selectors", type=int)
    ap.add_argument("--watchers", type=int)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--secs", type=int)
    ap.add_argument("--wait", default="60s", help="the watchers' ?wait= (default 60s)")
    ap.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--only", default="desired,deploy,watch",
                    help="the load steps to run after the setup, comma-separated (default: all of "
                         "desired,deploy,watch)")
    ap.add_argument("--deploy-conns",
                    help="connection counts of the deployments step, comma-separated (default: --conns), "
                         "one run each on the same setup")
    args = ap.parse_args()
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = args.only - {"desired", "deploy", "watch"}
    if unknown:
        ap.error(f"--only: unknown steps {sorted(unknown)} (desired, deploy, watch)")
    args.deploy_conns = [int(x) for x in args.deploy_conns.split(",")] if args.deploy_conns else [args.conns]
    defaults = dict(hosts=500, artifacts=100, selectors=20, watchers=500, secs=3) if args.quick else \
        dict(hosts=10_000, artifacts=1_000, selectors=100, watchers=10_000, secs=10)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "python"
    proc = Proc(args.pid)
    check(proc.alive(), f"no process {args.pid}")
    limit = raise_nofile(args.watchers + 256)
    if limit < args.watchers + 64:
        NOTES.append(f"open-file limit {limit}: watchers cut from {args.watchers} to {limit - 64}")
        args.watchers = limit - 64
    workdir = tempfile.mkdtemp(prefix="fleet-bench-")
    res = {}
    try:
        res["setup"] = setup(args)
        steps = [("desired", lambda: load_desired(args, workdir, proc))]
        for n in args.deploy_conns:
            steps.append((f"deploy@{n}", lambda n=n: load_deployments(args, workdir, proc, res["setup"]["ids"], n)))
        for key, fn in steps:
            if key.split("@")[0] not in args.only:
                continue
            try:
                res[key] = fn()
                r = res[key]
                log(f"{key}: {r['requests']} requests, {r['rps']:.0f}/s, p50 {r['p50']:.2f} ms, "
                    f"p99 {r['p99']:.2f} ms")
            except Exception as e:  # noqa: BLE001 - record it, go on
                error(f"{key}: {e}")
            check(proc.alive(), "the server died")
        try:
            if "watch" in args.only:
                res["watch"] = asyncio.run(watchers_run(args, proc))
                w = res["watch"]
                if w["failures"]:
                    error(f"{len(w['failures'])} watchers failed, first: {w['failures'][:3]}")
                if w["woke"] != w["armed"]:
                    error(f"{w['woke']} of {w['armed']} armed watchers got their 200 after the write "
                          f"(statuses {w['statuses']})")
        except Exception as e:  # noqa: BLE001
            error(f"watchers: {type(e).__name__}: {e}")
    except BenchError as e:
        error(str(e))
    except KeyboardInterrupt:
        error("interrupted")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if "setup" not in res:
        print("\n".join(f"ERROR: {e}" for e in ERRORS))
        return 1
    md = render(args, res)
    print()
    print(md)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(md + "\n")
        log(f"wrote {args.out}")
    return 1 if ERRORS else 0


if __name__ == "__main__":
    sys.exit(main())
