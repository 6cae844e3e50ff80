#!/usr/bin/env python3
"""Reproducer: one eBPF artifact manifest PUT into a fresh repository by
three clients at once, each on a different replica (one PostgreSQL, one
blob store, every replica signing with the same key). On one server it is
signed there exactly once (conformance/crash_harness.py checks that); across
replicas the "already signed?" check and the `.sig` tag's read-modify-write
are serialized by an in-process lock only (src/signing/service.rs,
`lock_tag`), so two or three replicas sign it and the tag holds two or three
signatures.

  sign_race_replicas.py --urls http://127.0.0.1:A,http://127.0.0.1:B,http://127.0.0.1:C [--tries 20]

Prints how many tries stored more than one signature; exits 1 if any did.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def one_try(urls: list[str], n: int) -> int:
    name = f"signrace/src-{os.getpid()}-{n}"
    r = requests.post(f"{urls[0]}/artifacts", timeout=30, json={
        "name": name, "version": "1.0.0", "type": "map", "architecture": "x86_64",
        "data": base64.b64encode(os.urandom(100)).decode()})
    r.raise_for_status()
    aid = r.json()["id"]
    body = requests.get(f"{urls[0]}/v2/{name}/manifests/{aid}", headers={"Accept": OCI_MANIFEST},
                        timeout=30).content
    m = json.loads(body)
    dst = f"signrace/dst-{os.getpid()}-{n}"
    for desc in [m["config"]] + m["layers"]:
        requests.post(f"{urls[0]}/v2/{dst}/blobs/uploads/?mount={desc['digest']}&from={name}",
                      timeout=30).raise_for_status()
    barrier = threading.Barrier(len(urls))
    statuses: list = []

    def put(url: str) -> None:
        barrier.wait()
        rr = requests.put(f"{url}/v2/{dst}/manifests/1.0.0", data=body, timeout=30,
                          headers={"Content-Type": OCI_MANIFEST})
        statuses.append(rr.status_code)
    threads = [threading.Thread(target=put, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    v = requests.get(f"{urls[0]}/artifacts/{aid}/verify", params={"repository": dst}, timeout=30).json()
    sigs = len(v.get("signatures", []))
    print(f"try {n}: PUTs {sorted(statuses)}, {sigs} signatures under the .sig tag of {dst}", flush=True)
    return sigs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--urls", required=True, help="comma-separated replica base URLs")
    p.add_argument("--tries", type=int, default=20)
    args = p.parse_args()
    urls = args.urls.split(",")
    many = sum(1 for n in range(args.tries) if one_try(urls, n) > 1)
    print(f"{many} of {args.tries} tries stored more than one signature")
    return 1 if many else 0


if __name__ == "__main__":
    sys.exit(main())
