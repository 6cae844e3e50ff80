#!/usr/bin/env python3
"""Measures what decompression bombs cost the other clients: starts a
bpf-registry binary on a fresh data dir, posts N `POST /artifacts` whose
`data` is a 2 MiB zstd frame declaring a 64 GiB tar entry (all at once),
probes `/healthz` every 20 ms until every bomb is answered, and prints the
worst and median probe latency and each bomb's status and time.

  bomb_healthz.py --binary target/release/bpf-registry [--bombs 2]

A measurement, not a test: it asserts nothing (tests/payload_limits.rs
holds the behaviour). Uses only `requests` and the standard library.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time

import requests


def zstd_bomb(declared: int) -> bytes:
    """A zstd frame built by hand (one raw block, then RLE blocks of 0x00)
    holding a tar whose one entry declares `declared` bytes: ~4 compressed
    bytes per 128 KiB, so 64 GiB is a 2 MiB payload."""
    info = tarfile.TarInfo("bomb.bin")
    info.size = declared
    info.mode = 0o644
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    assert len(header) == 512
    block = 128 * 1024
    out = bytearray([0x28, 0xB5, 0x2F, 0xFD, 0x00, (17 - 10) << 3])

    def block_header(last: bool, kind: int, size: int) -> bytes:
        v = int(last) | (kind << 1) | (size << 3)
        return bytes([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF])

    out += block_header(False, 0, 512) + header
    left = declared + 1024
    while left > 0:
        n = min(left, block)
        left -= n
        out += block_header(left == 0, 1, n) + b"\x00"
    return bytes(out)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default="target/release/bpf-registry")
    p.add_argument("--bombs", type=int, default=2)
    args = p.parse_args()
    data = tempfile.mkdtemp(prefix="bpf-registry-bomb-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, BPF_REGISTRY_HTTP_ADDR=f"127.0.0.1:{port}", BPF_REGISTRY_DATA_DIR=data,
               BPF_REGISTRY_LOG_LEVEL="ERROR")
    proc = subprocess.Popen([args.binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.05)
        b64 = base64.b64encode(zstd_bomb(64 << 30)).decode()
        answers: list = []

        def bomb(i: int) -> None:
            body = json.dumps({"name": f"bombs/b{i}", "version": "1.0.0", "type": "map",
                               "architecture": "x86_64", "data": b64})
            started = time.monotonic()
            try:
                r = requests.post(f"{url}/artifacts", data=body, timeout=600,
                                  headers={"Content-Type": "application/json"})
                answers.append((i, r.status_code, time.monotonic() - started))
            except requests.RequestException as e:
                answers.append((i, f"error {e}", time.monotonic() - started))

        threads = [threading.Thread(target=bomb, args=(i,), daemon=True) for i in range(args.bombs)]
        for t in threads:
            t.start()
        probes: list[float] = []
        while len(probes) < 5 or any(t.is_alive() for t in threads):
            started = time.monotonic()
            try:
                requests.get(f"{url}/healthz", timeout=120)
            except requests.RequestException:
                pass
            probes.append(time.monotonic() - started)
            time.sleep(0.02)
        for t in threads:
            t.join()
        for i, status, secs in sorted(answers):
            print(f"bomb {i}: {status} after {secs * 1000:.0f} ms")
        print(f"/healthz beside {args.bombs} bombs: worst {max(probes) * 1000:.0f} ms, "
              f"median {statistics.median(probes) * 1000:.1f} ms over {len(probes)} probes")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
