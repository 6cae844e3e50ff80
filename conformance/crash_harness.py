#!/usr/bin/env python3
"""Crash harness: kill -9 the registry under load, restart it, check that
nothing acknowledged was lost or corrupted.

Each round starts the release binary on one data directory (kept across
rounds), drives concurrent clients for a random 1-3 s -- monolithic and
chunked blob pushes with manifests, POST /artifacts, host associations
added and removed, manifest and artifact deletes, chunked uploads left open
on purpose, and a PUT completing an upload with a large final chunk raced
by a PATCH on the same upload 3 ms later -- then SIGKILLs the server at that random moment, restarts it
on the same directory and verifies, for everything acknowledged in this
and every earlier round:

  * every acknowledged manifest is readable by its tag with the same bytes,
    and each of its blobs with bytes that hash to the digest;
  * every acknowledged blob upload is readable with the right bytes;
  * every acknowledged REST artifact answers GET /artifacts/{id}, and its
    /binary hashes to its checksum; an acknowledged delete stays deleted;
  * /artifacts/for-host/{host} lists every acknowledged association not
    acknowledged as removed, and nothing that was never requested;
  * every chunked upload left open resumes (GET gives the acknowledged
    offset, or the offset plus a chunk in flight at the kill; continuing and
    closing it succeeds with the right digest) or is cleanly gone (404);
  * racing PUT/PATCH on one upload: never a 5xx, never both acknowledged,
    and a session acknowledged as finished (PUT 201) or cancelled (DELETE
    204) never reappears (GET 404 after the restart); the blob of every
    acknowledged PUT is intact (checked with the other blobs);
  * concurrent signature writes (the server signs with a local key): one
    artifact manifest PUT into a fresh repository by 3 clients at once is
    signed there exactly once, its `.sig` tag holds that signature, and
    `GET /artifacts/{id}/verify?repository=` says verified after the
    restart;
  * the store itself: no blob file whose bytes do not hash to its name, and
    `bpf-registry scrub --json` after every round reports no problem (rows
    against bytes: no manifest naming a missing blob or index child, no tag
    pointing to a missing manifest, no blob link to missing bytes).

Fleet operations (issue 13) are in the same random mix: PUT /hosts/{id}
(each worker owns a few hosts, so its writes to one are sequential), POST
/artifacts of a versioned name per worker, POST selectors on those
artifacts, PUT deployments of them on the worker's hosts and PUT of the
`stable` channel of the worker's name. After each restart, for everything
acknowledged:

  * GET /hosts/{id} holds the last acknowledged facts (or those of a PUT in
    flight at the kill), and GET /hosts lists every acknowledged host;
  * every acknowledged selector is listed by GET /artifacts/{id}/selectors
    with its selector text, and a host carrying the label it selects has
    the selector's name in its desired answer (chosen or excluded);
  * each (host, artifact) deployment's current state is the last
    acknowledged report or the one in flight at the kill;
  * GET /channels/{name}/stable points at the last acknowledged version (or
    the one in flight), and the OCI tag `stable` names the same manifest;
  * no fleet request got a 5xx.

With --events the server also delivers CloudEvents to a receiver thread
of the harness (which checks each delivery's HMAC and answers 500 to about
one in ten, so retries happen), and after each restart, once the outbox is
drained (bounded wait), for everything acknowledged so far:

  * every acknowledged manifest push, tag, manifest delete, REST create
    and delete, and signed copy has exactly one event id (delivered any
    number of times, always with the same bytes);
  * for every manifest, artifact and host association any event names,
    the events balance with the store: pushed minus deleted (created minus
    deleted, added minus removed) is 1 if it exists now and 0 if not, so
    no acknowledged change lost its event and no change that did not
    commit (a request cut by the kill) has one;
  * every acknowledged association has its `association.added` event.

Prints the counts (rounds, operations acknowledged, operations verified,
violations) and exits 1 if there is any violation. Uses only `requests`.

  crash_harness.py --binary target/release/bpf-registry [--rounds 5] [--seed N] [--events]

Replicas mode (`--replicas N`, issue 12's fault test; its parts are in
replica_cluster.py): N release binaries on one PostgreSQL database
(`--metadata`, created by the caller) and one S3 bucket prefix
(`--blob-store`, plus a prefix of this run's own), each with its own data
dir and port, all signing with one key. The same workers drive the load,
but every request goes to a random replica and one refused by a dead
replica is retried on another (so a chunked upload's POST, PATCHes and PUT
land on different replicas). Each round kills -9 one replica while it
serves an upload request (mid-push) and, with `--garage-dir DIR` (a cluster
of `garage.sh start3 DIR`, which the replicas reach through a TCP balancer
over the nodes' S3 ports), one Garage node of the three, at random moments;
each is restarted later in the round or left down through the checks. The
checks after each round run through a surviving replica: the ones above
(no 5xx anywhere, not only in races), with `bpf-registry scrub` on the same
stores instead of the on-disk check (rows against bytes, every blob
re-hashed: 0 torn objects), then every replica must answer the catalog, tag
lists, `/for-host`, manifests and artifacts alike. Prints the counts plus
replica kills, Garage node kills and requests retried on another replica.

  crash_harness.py --replicas 3 --metadata postgres://.../db \
      --blob-store 's3://bucket?endpoint=...&region=garage' [--garage-dir DIR] [--rounds 5] [--seed N]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
TIMEOUT = 15


def sha256(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class State:
    """Everything acknowledged so far, across rounds (guarded by `lock`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.manifests: dict[str, dict] = {}  # digest -> {repo, tag, body, blobs}
        self.deleted_manifests: dict[str, str] = {}  # digest -> repo
        self.uncertain_manifests: set[str] = set()  # delete in flight at the kill
        self.blobs: dict[tuple[str, str], bytes] = {}  # (repo, digest) -> data
        self.artifacts: dict[str, dict] = {}  # id -> {checksum, size}
        self.deleted_artifacts: set[str] = set()
        self.uncertain_artifacts: set[str] = set()
        self.assoc: set[tuple[str, str]] = set()  # (host, id) acknowledged
        self.assoc_uncertain: set[tuple[str, str]] = set()  # in flight either way
        self.sessions: list[dict] = []  # open chunked uploads
        self.ended_sessions: list[str] = []  # upload Locations acknowledged as finished or cancelled
        self.race_faults: list[str] = []  # 5xx or two winners in a PUT/PATCH race
        self.races = {"run": 0, "put_won": 0, "patch_won": 0}
        self.signed_copies: list[tuple[str, str]] = []  # (repo, id) acknowledged signed by a racing PUT
        self.sign_faults: list[str] = []  # 5xx in a signing race
        self.sign_races = 0
        self.acknowledged = 0
        # Fleet (issue 13). Hosts, names and channels are per worker, so the
        # writes to one are sequential: at most one is in flight at a kill.
        self.hosts: dict[str, dict] = {}  # host -> last acknowledged facts
        self.hosts_maybe: dict[str, list] = {}  # host -> facts of PUTs in flight at a kill
        self.fleet_versions: dict[str, list] = {}  # name -> [(version, id)] acknowledged
        self.selectors: dict[tuple[str, str], dict] = {}  # (artifact id, selector_id) -> {selector, name}
        self.deployments: dict[tuple[str, str], dict] = {}  # (host, id) -> last acknowledged report
        self.deployments_maybe: dict[tuple[str, str], list] = {}  # reports in flight at a kill
        self.channels: dict[str, str] = {}  # name -> version of the last acknowledged move
        self.channels_maybe: dict[str, list] = {}  # name -> versions of moves in flight at a kill
        self.fleet_faults: list[str] = []  # 5xx answers to fleet requests
        self.fleet_acked = {"host": 0, "artifact": 0, "selector": 0, "deployment": 0, "channel": 0}

    def ack(self, n: int = 1) -> None:
        with self.lock:
            self.acknowledged += n


class Worker(threading.Thread):
    def __init__(self, wid: int, url: str, state: State, stop: threading.Event, rnd: int, seed: int,
                 session_factory=requests.Session):
        super().__init__(daemon=True)
        self.wid, self.url, self.st, self.stop = wid, url, state, stop
        self.rnd = rnd
        self.rng = random.Random(seed * 1000 + rnd * 100 + wid)
        # One server: plain sessions. Replicas mode: sessions that send each
        # request to a random live replica (replica_cluster.BalancedSession).
        self.session_factory = session_factory
        self.s = session_factory()
        self.n = 0
        self.refusals = 0

    # -- operations; each records only what got a success answer ---------
    def push_blob(self, repo: str, data: bytes, chunked: bool) -> str:
        d = sha256(data)
        if not chunked:
            r = self.s.post(f"{self.url}/v2/{repo}/blobs/uploads/?digest={d}", data=data, timeout=TIMEOUT)
            if r.status_code != 201:
                raise RuntimeError(f"monolithic upload {r.status_code}")
            return d
        r = self.s.post(f"{self.url}/v2/{repo}/blobs/uploads/", timeout=TIMEOUT)
        if r.status_code != 202:
            raise RuntimeError(f"start upload {r.status_code}")
        loc = r.headers["Location"]
        step = max(1, len(data) // 3)
        for start in range(0, len(data), step):
            part = data[start:start + step]
            r = self.s.patch(f"{self.url}{loc}", data=part, timeout=TIMEOUT, headers={
                "Content-Range": f"{start}-{start + len(part) - 1}",
                "Content-Type": "application/octet-stream"})
            if r.status_code != 202:
                raise RuntimeError(f"patch {r.status_code}")
            loc = r.headers["Location"]
        r = self.s.put(f"{self.url}{loc}{'&' if '?' in loc else '?'}digest={d}", timeout=TIMEOUT)
        if r.status_code != 201:
            raise RuntimeError(f"close upload {r.status_code}")
        return d

    def op_push_image(self) -> None:
        repo = f"crash/w{self.wid}"
        tag = f"r{self.rnd}-{self.n}"
        config = json.dumps({"w": self.wid, "r": self.rnd, "n": self.n}).encode()
        size = self.rng.choice([10, 1000, 70_000, 300_000, 1_500_000])
        layer = self.rng.randbytes(size)
        chunked = self.rng.random() < 0.4
        cd = self.push_blob(repo, config, False)
        with self.st.lock:
            self.st.blobs[(repo, cd)] = config
        self.st.ack()
        ld = self.push_blob(repo, layer, chunked)
        with self.st.lock:
            self.st.blobs[(repo, ld)] = layer
        self.st.ack()
        body = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cd, "size": len(config)},
            "layers": [{"mediaType": "application/octet-stream", "digest": ld, "size": len(layer)}],
        }).encode()
        r = self.s.put(f"{self.url}/v2/{repo}/manifests/{tag}", data=body,
                       headers={"Content-Type": OCI_MANIFEST}, timeout=TIMEOUT)
        if r.status_code != 201:
            raise RuntimeError(f"manifest put {r.status_code} {r.text[:200]}")
        d = sha256(body)
        with self.st.lock:
            self.st.manifests[d] = {"repo": repo, "tag": tag, "body": body,
                                    "blobs": [(cd, config), (ld, layer)]}
        self.st.ack()

    def op_delete_manifest(self) -> None:
        with self.st.lock:
            mine = [d for d, m in self.st.manifests.items() if m["repo"] == f"crash/w{self.wid}"]
            if len(mine) < 3:
                return
            d = self.rng.choice(mine)
            m = self.st.manifests.pop(d)
            self.st.uncertain_manifests.add(d)
        r = self.s.delete(f"{self.url}/v2/{m['repo']}/manifests/{d}", timeout=TIMEOUT)
        with self.st.lock:
            self.st.uncertain_manifests.discard(d)
            if r.status_code == 202:
                self.st.deleted_manifests[d] = m["repo"]
            else:
                self.st.manifests[d] = m
        if r.status_code == 202:
            self.st.ack()

    def op_post_artifact(self) -> None:
        data = self.rng.randbytes(self.rng.choice([100, 5000, 200_000]))
        hosts = [f"host-{self.rng.randrange(4)}"] if self.rng.random() < 0.5 else []
        name = f"crash-rest-{self.wid}"
        version = f"{self.rnd}.{self.n}.0"
        pending = [(h, None) for h in hosts]
        r = self.s.post(f"{self.url}/artifacts", timeout=TIMEOUT, json={
            "name": name, "version": version, "type": "map", "architecture": "x86_64",
            "data": base64.b64encode(data).decode(), "hosts": hosts})
        if r.status_code != 201:
            raise RuntimeError(f"post artifact {r.status_code} {r.text[:200]}")
        a = r.json()
        with self.st.lock:
            self.st.artifacts[a["id"]] = {"checksum": a["checksum"], "size": a["size"]}
            for h, _ in pending:
                self.st.assoc.add((h, a["id"]))
        self.st.ack()

    def op_associate(self) -> None:
        with self.st.lock:
            ids = [i for i in self.st.artifacts if i not in self.st.uncertain_artifacts]
            if not ids:
                return
            aid = self.rng.choice(ids)
            host = f"host-{self.rng.randrange(4)}"
            key = (host, aid)
            if key in self.st.assoc_uncertain:
                return
            remove = key in self.st.assoc and self.rng.random() < 0.4
            self.st.assoc_uncertain.add(key)
            self.st.assoc.discard(key)
        if remove:
            r = self.s.delete(f"{self.url}/artifacts/{aid}/hosts/{host}", timeout=TIMEOUT)
            ok = r.status_code == 204
        else:
            r = self.s.post(f"{self.url}/artifacts/{aid}/hosts", json={"host_id": host}, timeout=TIMEOUT)
            ok = r.status_code in (200, 201)
        with self.st.lock:
            self.st.assoc_uncertain.discard(key)
            # (an artifact deleted meanwhile took its associations along)
            if ok and not remove and aid not in self.st.deleted_artifacts:
                self.st.assoc.add(key)
            if not ok and remove:
                self.st.assoc.add(key)  # the removal failed cleanly
            if not ok and not remove:
                pass  # never acknowledged: absent (or unknown, see below)
        if not ok:
            raise RuntimeError(f"association {r.status_code} {r.text[:200]}")
        self.st.ack()

    def op_delete_artifact(self) -> None:
        with self.st.lock:
            ids = [i for i in self.st.artifacts if i not in self.st.uncertain_artifacts]
            if len(ids) < 5:
                return
            aid = self.rng.choice(ids)
            self.st.uncertain_artifacts.add(aid)
        r = self.s.delete(f"{self.url}/artifacts/{aid}", timeout=TIMEOUT)
        with self.st.lock:
            if r.status_code == 204:
                self.st.artifacts.pop(aid, None)
                self.st.uncertain_artifacts.discard(aid)
                self.st.deleted_artifacts.add(aid)
                self.st.assoc = {(h, i) for (h, i) in self.st.assoc if i != aid}
            else:
                self.st.uncertain_artifacts.discard(aid)
        if r.status_code == 204:
            self.st.ack()

    def op_open_session(self) -> None:
        repo = f"crash/w{self.wid}"
        data = self.rng.randbytes(self.rng.choice([30_000, 600_000]))
        r = self.s.post(f"{self.url}/v2/{repo}/blobs/uploads/", timeout=TIMEOUT)
        if r.status_code != 202:
            raise RuntimeError(f"start upload {r.status_code}")
        sess = {"repo": repo, "loc": r.headers["Location"], "data": data, "acked": 0, "inflight": 0}
        with self.st.lock:
            self.st.sessions.append(sess)
        self.st.ack()
        chunk = len(data) // 4
        for _ in range(self.rng.randrange(1, 4)):
            start = sess["acked"]
            part = data[start:start + chunk]
            sess["inflight"] = len(part)
            r = self.s.patch(f"{self.url}{sess['loc']}", data=part, timeout=TIMEOUT, headers={
                "Content-Range": f"{start}-{start + len(part) - 1}",
                "Content-Type": "application/octet-stream"})
            if r.status_code != 202:
                raise RuntimeError(f"patch {r.status_code}")
            sess["acked"] = start + len(part)
            sess["inflight"] = 0
            sess["loc"] = r.headers["Location"]
            self.st.ack()

    def op_race_upload(self) -> None:
        """PUT with a large final chunk, and a streamed PATCH (no
        Content-Range) on the same upload 3 ms later: one writer wins."""
        repo = f"crash/w{self.wid}"
        first = self.rng.randbytes(30_000)
        final = self.rng.randbytes(self.rng.choice([1 << 20, 4 << 20]))
        data = first + final
        d = sha256(data)
        r = self.s.post(f"{self.url}/v2/{repo}/blobs/uploads/", timeout=TIMEOUT)
        if r.status_code != 202:
            raise RuntimeError(f"start upload {r.status_code}")
        loc = r.headers["Location"]
        r = self.s.patch(f"{self.url}{loc}", data=first, timeout=TIMEOUT, headers={
            "Content-Range": f"0-{len(first) - 1}", "Content-Type": "application/octet-stream"})
        if r.status_code != 202:
            raise RuntimeError(f"patch {r.status_code}")
        loc = r.headers["Location"]
        put: dict = {}

        def complete() -> None:
            try:
                rr = self.session_factory().put(f"{self.url}{loc}{'&' if '?' in loc else '?'}digest={d}", data=final,
                                  timeout=TIMEOUT, headers={
                                      "Content-Range": f"{len(first)}-{len(data) - 1}",
                                      "Content-Type": "application/octet-stream"})
                put["status"], put["text"] = rr.status_code, rr.text[:200]
            except requests.RequestException:
                put["status"] = None  # cut off (by the kill): either way
        t = threading.Thread(target=complete, daemon=True)
        t.start()
        time.sleep(0.003)
        try:
            r = self.s.patch(f"{self.url}{loc}", data=b"x" * 1024, timeout=TIMEOUT,
                             headers={"Content-Type": "application/octet-stream"})
            patch = (r.status_code, r.text[:200])
        except requests.RequestException:
            patch = (None, "")
        t.join(timeout=TIMEOUT)
        statuses = [("PUT", put.get("status"), put.get("text", "")), ("PATCH", patch[0], patch[1])]
        with self.st.lock:
            self.st.races["run"] += 1
            for what, status, text in statuses:
                if status is not None and status >= 500:
                    self.st.race_faults.append(f"race on {loc}: {what} {status} {text}")
            if put.get("status") == 201 and patch[0] == 202:
                self.st.race_faults.append(f"race on {loc}: both PUT and PATCH acknowledged")
            if put.get("status") == 201:
                self.st.races["put_won"] += 1
                self.st.blobs[(repo, d)] = data
                self.st.ended_sessions.append(loc)
            elif patch[0] == 202:
                self.st.races["patch_won"] += 1
        if put.get("status") == 201:
            self.st.ack()
            return
        if patch[0] == 202:
            self.st.ack()
            r = self.s.delete(f"{self.url}{loc}", timeout=TIMEOUT)
            if r.status_code == 204:
                with self.st.lock:
                    self.st.ended_sessions.append(loc)
                self.st.ack()

    def op_race_sign(self) -> None:
        """Three clients PUT the same artifact manifest into a fresh
        repository at once: the registry signs it there exactly once."""
        name = f"crash-sign-{self.wid}"
        version = f"{self.rnd}.{self.n}.0"
        data = self.rng.randbytes(self.rng.choice([100, 5000]))
        r = self.s.post(f"{self.url}/artifacts", timeout=TIMEOUT, json={
            "name": name, "version": version, "type": "map", "architecture": "x86_64",
            "data": base64.b64encode(data).decode()})
        if r.status_code != 201:
            raise RuntimeError(f"post artifact {r.status_code} {r.text[:200]}")
        aid = r.json()["id"]
        r = self.s.get(f"{self.url}/v2/{name}/manifests/{aid}", timeout=TIMEOUT,
                       headers={"Accept": OCI_MANIFEST})
        if r.status_code != 200:
            raise RuntimeError(f"get manifest {r.status_code}")
        body = r.content
        m = json.loads(body)
        dst = f"crash/signed-{self.wid}-{self.rnd}-{self.n}"
        for desc in [m["config"]] + m["layers"]:
            rr = self.s.post(f"{self.url}/v2/{dst}/blobs/uploads/?mount={desc['digest']}&from={name}",
                             timeout=TIMEOUT)
            if rr.status_code != 201:
                raise RuntimeError(f"mount {rr.status_code}")
        results: list = []

        def put() -> None:
            try:
                rr = self.session_factory().put(f"{self.url}/v2/{dst}/manifests/{version}", data=body, timeout=TIMEOUT,
                                  headers={"Content-Type": OCI_MANIFEST})
                results.append((rr.status_code, rr.text[:200]))
            except requests.RequestException:
                results.append((None, ""))  # cut off by the kill
        threads = [threading.Thread(target=put, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=TIMEOUT)
        with self.st.lock:
            self.st.sign_races += 1
            for status, text in results:
                if status is not None and status >= 500:
                    self.st.sign_faults.append(f"signing race in {dst}: PUT {status} {text}")
            answered = [(status, text) for status, text in results if status is not None]
            if answered and not any(status == 201 for status, _ in answered):
                # Three PUTs of a valid manifest that all got an answer:
                # at least one must have stored it.
                self.st.sign_faults.append(f"signing race in {dst}: no PUT stored it: {answered}")
            if any(status == 201 for status, _ in results):
                self.st.signed_copies.append((dst, aid))
        if any(status == 201 for status, _ in results):
            self.st.ack()

    # -- fleet (issue 13) ---------------------------------------------------
    def fleet_fault(self, what: str, r) -> None:
        if r.status_code >= 500:
            with self.st.lock:
                self.st.fleet_faults.append(f"{what}: {r.status_code} {r.text[:200]}")

    def fleet_name(self) -> str:
        return f"crash-fleet-{self.wid}"

    def op_put_host(self) -> None:
        host = f"fleet-w{self.wid}-{self.rng.randrange(4)}"
        facts = {
            "architecture": self.rng.choice(["x86_64", "aarch64"]),
            "kernel_release": self.rng.choice(["5.4.0-150-generic", "5.15.0-91-generic", "6.8.0-45-generic"]),
            "btf": self.rng.random() < 0.8,
            "labels": {"crash": f"w{self.wid}", "env": self.rng.choice(["prod", "staging"]),
                       "round": str(self.rnd), "n": str(self.n)},
            "agent_version": f"{self.rnd}.{self.n}",
        }
        with self.st.lock:
            self.st.hosts_maybe.setdefault(host, []).append(facts)
        r = self.s.put(f"{self.url}/hosts/{host}", json=facts, timeout=TIMEOUT)
        self.fleet_fault(f"PUT /hosts/{host}", r)
        with self.st.lock:
            if r.status_code in (200, 201):
                self.st.hosts[host] = facts
                self.st.hosts_maybe.pop(host, None)
                self.st.fleet_acked["host"] += 1
            elif r.status_code < 500:
                self.st.hosts_maybe[host].remove(facts)  # refused: not applied
        if r.status_code not in (200, 201):
            raise RuntimeError(f"put host {r.status_code} {r.text[:200]}")
        self.st.ack()

    def op_fleet_artifact(self) -> None:
        name = self.fleet_name()
        version = f"{self.rnd}.{self.n}.0"
        data = self.rng.randbytes(200)
        r = self.s.post(f"{self.url}/artifacts", timeout=TIMEOUT, json={
            "name": name, "version": version, "type": "map", "architecture": "x86_64",
            "data": base64.b64encode(data).decode()})
        self.fleet_fault(f"POST /artifacts {name} {version}", r)
        if r.status_code != 201:
            raise RuntimeError(f"post fleet artifact {r.status_code} {r.text[:200]}")
        with self.st.lock:
            self.st.fleet_versions.setdefault(name, []).append((version, r.json()["id"]))
            self.st.fleet_acked["artifact"] += 1
        self.st.ack()

    def op_post_selector(self) -> None:
        name = self.fleet_name()
        with self.st.lock:
            ids = [i for _, i in self.st.fleet_versions.get(name, [])]
        if not ids:
            return
        aid = self.rng.choice(ids)
        sel = self.rng.choice([f"crash=w{self.wid}", "env=prod", "env in (prod,staging),!canary",
                               f"crash=w{self.wid},round!={self.rnd}", ""])
        r = self.s.post(f"{self.url}/artifacts/{aid}/selectors", json={"selector": sel}, timeout=TIMEOUT)
        self.fleet_fault(f"POST selector on {aid}", r)
        if r.status_code not in (200, 201):
            raise RuntimeError(f"post selector {r.status_code} {r.text[:200]}")
        sid = r.json()["selector_id"]
        with self.st.lock:
            self.st.selectors[(aid, sid)] = {"selector": sel, "name": name}
            self.st.fleet_acked["selector"] += 1
        self.st.ack()

    def op_put_deployment(self) -> None:
        with self.st.lock:
            hosts = [h for h in self.st.hosts if h.startswith(f"fleet-w{self.wid}-")]
            ids = [i for _, i in self.st.fleet_versions.get(self.fleet_name(), [])]
        if not hosts or not ids:
            return
        host, aid = self.rng.choice(hosts), self.rng.choice(ids)
        report = {"state": self.rng.choice(["loaded", "failed", "unloaded"]),
                  "message": f"w{self.wid} r{self.rnd} n{self.n}", "attach_point": "eth0/xdp"}
        key = (host, aid)
        with self.st.lock:
            self.st.deployments_maybe.setdefault(key, []).append(report)
        r = self.s.put(f"{self.url}/hosts/{host}/deployments/{aid}", json=report, timeout=TIMEOUT)
        self.fleet_fault(f"PUT deployment {host} {aid}", r)
        with self.st.lock:
            if r.status_code == 200:
                self.st.deployments[key] = report
                self.st.deployments_maybe.pop(key, None)
                self.st.fleet_acked["deployment"] += 1
            elif r.status_code < 500:
                self.st.deployments_maybe[key].remove(report)
        if r.status_code != 200:
            raise RuntimeError(f"put deployment {r.status_code} {r.text[:200]}")
        self.st.ack()

    def op_put_channel(self) -> None:
        name = self.fleet_name()
        with self.st.lock:
            versions = [v for v, _ in self.st.fleet_versions.get(name, [])]
        if not versions:
            return
        version = self.rng.choice(versions)
        with self.st.lock:
            self.st.channels_maybe.setdefault(name, []).append(version)
        r = self.s.put(f"{self.url}/channels/{name}/stable", json={"version": version}, timeout=TIMEOUT)
        self.fleet_fault(f"PUT /channels/{name}/stable", r)
        with self.st.lock:
            if r.status_code == 200:
                self.st.channels[name] = version
                self.st.channels_maybe.pop(name, None)
                self.st.fleet_acked["channel"] += 1
            elif r.status_code < 500:
                self.st.channels_maybe[name].remove(version)
        if r.status_code != 200:
            raise RuntimeError(f"put channel {r.status_code} {r.text[:200]}")
        self.st.ack()

    def run(self) -> None:
        ops = [(self.op_push_image, 40), (self.op_post_artifact, 20), (self.op_associate, 20),
               (self.op_delete_manifest, 6), (self.op_delete_artifact, 4), (self.op_open_session, 10),
               (self.op_race_upload, 6), (self.op_race_sign, 6),
               (self.op_put_host, 8), (self.op_fleet_artifact, 5), (self.op_post_selector, 4),
               (self.op_put_deployment, 10), (self.op_put_channel, 5)]
        fns, weights = zip(*ops)
        while not self.stop.is_set():
            self.n += 1
            op = self.rng.choices(fns, weights)[0]
            try:
                op()
            except RuntimeError as e:
                # A refused operation (not a lost connection): its status
                # tells a later violation's story, so the first few are shown.
                if self.stop.is_set():
                    return
                self.refusals += 1
                if self.refusals <= 5:
                    print(f"  worker: refused: {e}", flush=True)
                time.sleep(0.01)
            except (requests.RequestException, KeyError, ValueError):
                if self.stop.is_set():
                    return
                time.sleep(0.01)


# -- events (--events) -----------------------------------------------------

EVENT_SECRET = "crash-harness-event-secret-0123456789"
EV = "dev.aegisflux.registry."
EVENTS_WAIT = 120  # seconds: a liveness bound for draining the outbox


class EventReceiver:
    """A webhook on 127.0.0.1 for the whole run: records every delivery
    (id -> body), checks its signature and content type, and answers 500
    to about one delivery in ten so the server's retries are exercised."""

    def __init__(self, seed: int) -> None:
        self.lock = threading.Lock()
        self.rng = random.Random(seed + 7)
        self.bodies: dict[str, bytes] = {}
        self.events: dict[str, dict] = {}
        self.deliveries = 0
        self.refused = 0
        self.faults: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                status = receiver.record(self.headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, headers, body: bytes) -> int:
        want = "sha256=" + hmac.new(EVENT_SECRET.encode(), body, hashlib.sha256).hexdigest()
        with self.lock:
            self.deliveries += 1
            if not hmac.compare_digest(headers.get("X-Registry-Signature", ""), want):
                self.faults.append(f"event with a wrong signature: {body[:120]!r}")
                return 400
            if headers.get("Content-Type") != "application/cloudevents+json":
                self.faults.append(f"event with Content-Type {headers.get('Content-Type')!r}")
            try:
                e = json.loads(body)
            except ValueError:
                self.faults.append(f"event body is not JSON: {body[:120]!r}")
                return 400
            eid = e.get("id", "")
            if e.get("specversion") != "1.0" or not eid or not str(e.get("type", "")).startswith(EV):
                self.faults.append(f"not a registry CloudEvent: {body[:200]!r}")
            if eid in self.bodies and self.bodies[eid] != body:
                self.faults.append(f"event {eid} delivered with two different bodies")
            self.bodies.setdefault(eid, body)
            self.events.setdefault(eid, e)
            if self.rng.random() < 0.1:
                self.refused += 1
                return 500
            return 200

    def snapshot(self) -> tuple[list[dict], list[str]]:
        with self.lock:
            faults, self.faults = self.faults, []
            return list(self.events.values()), faults


class Harness:
    def __init__(self, args) -> None:
        self.args = args
        self.binary = args.binary
        self.data = tempfile.mkdtemp(prefix="bpf-registry-crash-")
        self.st = State()
        self.violations: list[str] = []
        self.verified = 0
        self.proc = None
        self.url = ""
        # A local signing key: every artifact manifest is signed (the
        # signing race needs a signer).
        self.key = self.data + ".signing-key.pem"
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-out", self.key], check=True, capture_output=True)
        os.chmod(self.key, 0o600)
        self.events = EventReceiver(args.seed) if args.events else None

    def violation(self, msg: str) -> None:
        self.violations.append(msg)
        print(f"VIOLATION: {msg}", flush=True)

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ,
                   BPF_REGISTRY_HTTP_ADDR=f"127.0.0.1:{port}",
                   BPF_REGISTRY_DATA_DIR=self.data,
                   BPF_REGISTRY_LOG_LEVEL="WARN",
                   # The collector runs (and is killed) during the rounds;
                   # the default grace keeps everything fresh.
                   BPF_REGISTRY_GC_INTERVAL="1s",
                   BPF_REGISTRY_SIGNER="key",
                   BPF_REGISTRY_SIGNING_KEY=self.key,
                   **self.events_env())
        log = open(os.path.join(os.path.dirname(self.data), os.path.basename(self.data) + ".log"), "ab")
        self.proc = subprocess.Popen([self.binary], env=env, stdout=log, stderr=log)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode} at start-up")
            time.sleep(0.05)
        raise SystemExit("server did not become healthy")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    # -- checks ----------------------------------------------------------
    def check_manifests(self, s: requests.Session) -> None:
        for d, m in list(self.st.manifests.items()):
            r = s.get(f"{self.url}/v2/{m['repo']}/manifests/{m['tag']}", headers={"Accept": OCI_MANIFEST}, timeout=TIMEOUT)
            if r.status_code != 200 or r.content != m["body"] or r.headers.get("Docker-Content-Digest") != d:
                self.violation(f"manifest {m['repo']}:{m['tag']} ({d}): {r.status_code}")
                continue
            for bd, data in m["blobs"]:
                r = s.get(f"{self.url}/v2/{m['repo']}/blobs/{bd}", timeout=TIMEOUT)
                if r.status_code != 200 or sha256(r.content) != bd or r.content != data:
                    self.violation(f"blob {bd} of {m['repo']}:{m['tag']}: {r.status_code}")
            self.verified += 1
        for d, repo in self.st.deleted_manifests.items():
            r = s.get(f"{self.url}/v2/{repo}/manifests/{d}", timeout=TIMEOUT)
            if r.status_code != 404:
                self.violation(f"deleted manifest {repo}@{d} answers {r.status_code}")
            self.verified += 1

    def check_blobs(self, s: requests.Session) -> None:
        for (repo, d), data in list(self.st.blobs.items()):
            r = s.get(f"{self.url}/v2/{repo}/blobs/{d}", timeout=TIMEOUT)
            if r.status_code != 200 or r.content != data:
                self.violation(f"acknowledged blob {repo}@{d}: {r.status_code}")
            self.verified += 1

    def check_artifacts(self, s: requests.Session) -> None:
        for aid, a in list(self.st.artifacts.items()):
            r = s.get(f"{self.url}/artifacts/{aid}", timeout=TIMEOUT)
            if aid in self.st.uncertain_artifacts:
                continue
            if r.status_code != 200:
                self.violation(f"artifact {aid}: {r.status_code}")
                continue
            r = s.get(f"{self.url}/artifacts/{aid}/binary", timeout=TIMEOUT)
            if r.status_code != 200 or sha256(r.content) != a["checksum"] or len(r.content) != a["size"]:
                self.violation(f"artifact {aid} binary: {r.status_code}")
            self.verified += 1
        for aid in self.st.deleted_artifacts:
            r = s.get(f"{self.url}/artifacts/{aid}", timeout=TIMEOUT)
            if r.status_code != 404:
                self.violation(f"deleted artifact {aid} answers {r.status_code}")
            self.verified += 1
        # Unfinished artifact deletes were either applied or not; settle them.
        for aid in list(self.st.uncertain_artifacts):
            r = s.get(f"{self.url}/artifacts/{aid}", timeout=TIMEOUT)
            self.st.uncertain_artifacts.discard(aid)
            if r.status_code == 404:
                self.st.artifacts.pop(aid, None)
                self.st.deleted_artifacts.add(aid)
                self.st.assoc = {(h, i) for (h, i) in self.st.assoc if i != aid}
            else:
                # A delete removes the associations first, then the
                # artifact: cut short, it may have taken some of them.
                gone = {(h, i) for (h, i) in self.st.assoc if i == aid}
                self.st.assoc -= gone
                self.st.assoc_uncertain |= gone

    def check_hosts(self, s: requests.Session) -> None:
        hosts = {h for h, _ in self.st.assoc} | {h for h, _ in self.st.assoc_uncertain} | {f"host-{i}" for i in range(4)}
        for h in sorted(hosts):
            r = s.get(f"{self.url}/artifacts/for-host/{h}", timeout=TIMEOUT)
            if r.status_code != 200:
                self.violation(f"for-host {h}: {r.status_code}")
                continue
            listed = {a["id"] for a in r.json()["artifacts"]}
            want = {i for (hh, i) in self.st.assoc if hh == h}
            maybe = {i for (hh, i) in self.st.assoc_uncertain if hh == h}
            for i in want - listed:
                self.violation(f"for-host {h} misses acknowledged association with {i}")
            for i in listed - want - maybe:
                # Associations posted with an artifact whose create was in
                # flight at the kill may exist; anything else may not.
                if i in self.st.artifacts or i in self.st.deleted_artifacts:
                    self.violation(f"for-host {h} lists {i}, never acknowledged")
            # Settle the uncertain ones to what the server says now.
            for i in maybe:
                if i in listed:
                    self.st.assoc.add((h, i))
            self.verified += 1
        self.st.assoc_uncertain.clear()

    def check_sessions(self, s: requests.Session) -> None:
        for sess in self.st.sessions:
            if sess.get("done"):
                continue
            sess["done"] = True
            r = s.get(f"{self.url}{sess['loc']}", timeout=TIMEOUT)
            if r.status_code == 404:
                self.verified += 1  # purged cleanly
                continue
            if r.status_code != 204:
                self.violation(f"upload status {sess['loc']}: {r.status_code}")
                continue
            rng = r.headers.get("Range", "0-0")
            end = int(rng.split("-")[1])
            offset = 0 if (end == 0 and sess["acked"] == 0) else end + 1
            allowed = {sess["acked"], sess["acked"] + sess["inflight"]}
            if offset not in allowed:
                self.violation(f"upload {sess['loc']} resumed at {offset}, acknowledged {sess['acked']}")
                continue
            data = sess["data"]
            loc = r.headers.get("Location", sess["loc"])
            if offset < len(data):
                r = s.patch(f"{self.url}{loc}", data=data[offset:], timeout=TIMEOUT, headers={
                    "Content-Range": f"{offset}-{len(data) - 1}",
                    "Content-Type": "application/octet-stream"})
                if r.status_code != 202:
                    self.violation(f"resume {loc}: {r.status_code} {r.text[:200]}")
                    continue
                loc = r.headers["Location"]
            d = sha256(data)
            r = s.put(f"{self.url}{loc}{'&' if '?' in loc else '?'}digest={d}", timeout=TIMEOUT)
            if r.status_code != 201:
                self.violation(f"close resumed {loc}: {r.status_code} {r.text[:200]}")
                continue
            r = s.get(f"{self.url}/v2/{sess['repo']}/blobs/{d}", timeout=TIMEOUT)
            if r.status_code != 200 or r.content != data:
                self.violation(f"resumed blob {d}: {r.status_code}")
                continue
            self.st.blobs[(sess["repo"], d)] = data
            self.verified += 1

    def check_races(self, s: requests.Session) -> None:
        with self.st.lock:
            faults, self.st.race_faults = self.st.race_faults, []
            ended = list(self.st.ended_sessions)
        for f in faults:
            self.violation(f)
        for loc in ended:
            r = s.get(f"{self.url}{loc}", timeout=TIMEOUT)
            if r.status_code != 404:
                self.violation(f"finished upload {loc} came back: {r.status_code}")
            self.verified += 1

    def check_signatures(self, s: requests.Session) -> None:
        with self.st.lock:
            faults, self.st.sign_faults = self.st.sign_faults, []
            copies = list(self.st.signed_copies)
        for f in faults:
            self.violation(f)
        for repo, aid in copies:
            r = s.get(f"{self.url}/artifacts/{aid}/verify", params={"repository": repo}, timeout=TIMEOUT)
            if r.status_code != 200:
                self.violation(f"verify {repo}@{aid}: {r.status_code} {r.text[:200]}")
                continue
            v = r.json()
            sigs = v.get("signatures", [])
            if not v.get("verified") or len(sigs) != 1:
                self.violation(f"signed copy {repo}@{aid}: verified={v.get('verified')}, "
                               f"{len(sigs)} signatures under its .sig tag (expected exactly 1)")
            self.verified += 1

    def check_fleet(self, s: requests.Session) -> None:
        """Every acknowledged fleet write is readable (issue 13); the writes
        in flight at the kill either took or did not, and are settled to
        what the server says now."""
        with self.st.lock:
            faults, self.st.fleet_faults = self.st.fleet_faults, []
        for f in faults:
            self.violation(f"fleet 5xx: {f}")

        def same_facts(got: dict, want: dict) -> bool:
            return all(got.get(k) == want[k] for k in ("architecture", "kernel_release", "btf", "labels",
                                                        "agent_version"))
        # Hosts: the last acknowledged facts, or a PUT in flight at the kill.
        for host in sorted(set(self.st.hosts) | set(self.st.hosts_maybe)):
            want = self.st.hosts.get(host)
            maybe = self.st.hosts_maybe.get(host, [])
            r = s.get(f"{self.url}/hosts/{host}", timeout=TIMEOUT)
            if r.status_code == 404 and want is None:
                self.st.hosts_maybe.pop(host, None)
                continue
            if r.status_code != 200:
                self.violation(f"host {host}: {r.status_code} {r.text[:200]}")
                continue
            got = r.json()
            match = next((f for f in ([want] if want else []) + maybe if same_facts(got, f)), None)
            if match is None:
                self.violation(f"host {host}: facts {got} are neither the acknowledged {want} nor in flight")
                continue
            self.st.hosts[host] = match
            self.st.hosts_maybe.pop(host, None)
            self.verified += 1
        listed, cursor = set(), None
        for _ in range(1000):
            params = {"limit": "1000", "label": "crash"}
            if cursor:
                params["cursor"] = cursor
            r = s.get(f"{self.url}/hosts", params=params, timeout=TIMEOUT)
            if r.status_code != 200:
                self.violation(f"GET /hosts: {r.status_code} {r.text[:200]}")
                break
            page = r.json()
            listed |= {h["host_id"] for h in page["hosts"]}
            cursor = page.get("next_cursor")
            if not cursor:
                break
        for host in set(self.st.hosts) - listed:
            self.violation(f"GET /hosts?label=crash does not list acknowledged host {host}")
        self.verified += 1

        # Fleet artifacts: readable.
        for name, versions in sorted(self.st.fleet_versions.items()):
            for version, aid in versions:
                r = s.get(f"{self.url}/artifacts/{aid}", timeout=TIMEOUT)
                if r.status_code != 200:
                    self.violation(f"fleet artifact {name} {version} ({aid}): {r.status_code}")
                self.verified += 1

        # Selectors: listed with their text; a host with the label it
        # selects has the name in its desired answer.
        by_artifact: dict[str, dict] = {}
        for (aid, sid), sel in self.st.selectors.items():
            by_artifact.setdefault(aid, {})[sid] = sel
        for aid, sels in sorted(by_artifact.items()):
            r = s.get(f"{self.url}/artifacts/{aid}/selectors", timeout=TIMEOUT)
            if r.status_code != 200:
                self.violation(f"selectors of {aid}: {r.status_code} {r.text[:200]}")
                continue
            listed_sels = {x["selector_id"]: x.get("selector") for x in r.json().get("selectors", [])}
            for sid, sel in sels.items():
                if sid not in listed_sels:
                    self.violation(f"acknowledged selector {sid} ({sel['selector']!r}) of {aid} is not listed")
                elif listed_sels[sid] != sel["selector"]:
                    self.violation(f"selector {sid} of {aid}: {listed_sels[sid]!r}, acknowledged {sel['selector']!r}")
                self.verified += 1
        for (aid, sid), sel in sorted(self.st.selectors.items()):
            wid = sel["name"].rsplit("-", 1)[1]
            if sel["selector"] != f"crash=w{wid}":
                continue
            for host in sorted(h for h in self.st.hosts if h.startswith(f"fleet-w{wid}-")):
                r = s.get(f"{self.url}/hosts/{host}/desired", timeout=TIMEOUT)
                if r.status_code != 200:
                    self.violation(f"desired of {host}: {r.status_code} {r.text[:200]}")
                    continue
                d = r.json()
                names = {a["name"] for a in d.get("artifacts", [])} | {e["name"] for e in d.get("excluded", [])}
                if sel["name"] not in names:
                    self.violation(f"desired of {host} (label crash=w{wid}) lacks {sel['name']}, "
                                   f"assigned by acknowledged selector {sid}")
                self.verified += 1

        # Deployments: the last acknowledged report, or one in flight.
        for host in sorted({h for h, _ in self.st.deployments} | {h for h, _ in self.st.deployments_maybe}):
            r = s.get(f"{self.url}/hosts/{host}/deployments", timeout=TIMEOUT)
            if r.status_code != 200:
                self.violation(f"deployments of {host}: {r.status_code} {r.text[:200]}")
                continue
            current = {d["artifact_id"]: d for d in r.json().get("deployments", [])}
            keys = {k for k in self.st.deployments if k[0] == host} | \
                   {k for k in self.st.deployments_maybe if k[0] == host}
            for key in sorted(keys):
                want = self.st.deployments.get(key)
                maybe = self.st.deployments_maybe.pop(key, [])
                got = current.get(key[1])
                if got is None:
                    if want is not None:
                        self.violation(f"deployment {key}: gone, acknowledged {want}")
                    continue
                match = next((x for x in ([want] if want else []) + maybe
                              if got.get("message") == x["message"] and got.get("state") == x["state"]), None)
                if match is None:
                    self.violation(f"deployment {key}: {got.get('state')} {got.get('message')!r} is neither the "
                                   f"acknowledged {want} nor a report in flight")
                    continue
                self.st.deployments[key] = match
                self.verified += 1

        # Channels: the last acknowledged move (or one in flight), and the
        # OCI tag says the same.
        for name in sorted(set(self.st.channels) | set(self.st.channels_maybe)):
            want = self.st.channels.get(name)
            maybe = self.st.channels_maybe.pop(name, [])
            r = s.get(f"{self.url}/channels/{name}/stable", timeout=TIMEOUT)
            if r.status_code == 404 and want is None:
                continue
            if r.status_code != 200:
                self.violation(f"channel {name}/stable: {r.status_code} {r.text[:200]}")
                continue
            c = r.json()
            if c.get("version") != want and c.get("version") not in maybe:
                self.violation(f"channel {name}/stable at {c.get('version')}, acknowledged {want}")
                continue
            self.st.channels[name] = c["version"]
            tag = s.head(f"{self.url}/v2/{name}/manifests/stable", timeout=TIMEOUT,
                         headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
            ver = s.head(f"{self.url}/v2/{name}/manifests/{c['version']}", timeout=TIMEOUT,
                         headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
            digests = {tag.headers.get("Docker-Content-Digest"), ver.headers.get("Docker-Content-Digest"), c.get("id")}
            if tag.status_code != 200 or ver.status_code != 200 or len(digests) != 1:
                self.violation(f"channel {name}/stable: tag {tag.status_code} {tag.headers.get('Docker-Content-Digest')}, "
                               f"version {c['version']} {ver.status_code} {ver.headers.get('Docker-Content-Digest')}, "
                               f"channel id {c.get('id')}")
            self.verified += 1

    def check_disk(self) -> None:
        """The store itself: every blob file hashes to its name, and
        `bpf-registry scrub` (the rows against the bytes: manifests and the
        blobs they reference, index children, tags, blob links, referrers)
        finds nothing wrong. Nothing writes while it runs (the workers have
        stopped), so any problem it reports is a violation."""
        blobs_dir = os.path.join(self.data, "blobs", "sha256")
        for name in os.listdir(blobs_dir) if os.path.isdir(blobs_dir) else []:
            if name.startswith("."):  # internal: temp files
                continue
            with open(os.path.join(blobs_dir, name), "rb") as f:
                h = hashlib.sha256(f.read()).hexdigest()
            if h != name:
                self.violation(f"blob file {name} hashes to {h}")
        scrub = subprocess.run([self.binary, "scrub", "--json"],
                               env=dict(os.environ, BPF_REGISTRY_DATA_DIR=self.data, BPF_REGISTRY_LOG_LEVEL="ERROR"),
                               capture_output=True, text=True, timeout=300)
        try:
            report = json.loads(scrub.stdout)
        except ValueError:
            self.violation(f"scrub --json gave no report (exit {scrub.returncode}): {scrub.stderr[-300:]}")
            return
        for problem in report.get("problems", []):
            self.violation(f"scrub: {problem.get('kind')} {problem.get('repository') or ''} "
                           f"{problem.get('object')}: {problem.get('detail')}")
        if report.get("manifests_checked", 0) == 0 and self.st.acknowledged:
            self.violation("scrub checked no manifest although pushes were acknowledged")
        self.verified += 1

    def verify(self) -> None:
        s = requests.Session()
        self.check_disk()
        self.check_manifests(s)
        self.check_blobs(s)
        self.check_artifacts(s)
        self.check_hosts(s)
        self.check_sessions(s)
        self.check_races(s)
        self.check_signatures(s)
        self.check_fleet(s)

    # -- events (--events) -------------------------------------------------
    def events_env(self) -> dict:
        if not self.events:
            return {}
        return {"BPF_REGISTRY_EVENTS_WEBHOOK": self.events.url,
                "BPF_REGISTRY_EVENTS_SECRET": EVENT_SECRET,
                "BPF_REGISTRY_EVENTS_TIMEOUT": "5s"}

    def events_pending(self) -> int:
        """Deliveries the outbox still holds (the embedded store, read
        beside the server)."""
        db = sqlite3.connect(os.path.join(self.data, "metadata.db"), timeout=30)
        try:
            return db.execute("SELECT COUNT(*) FROM event_deliveries WHERE delivered_at IS NULL").fetchone()[0]
        finally:
            db.close()

    def check_events(self) -> None:
        if not self.events:
            return
        deadline = time.time() + EVENTS_WAIT
        pending = self.events_pending()
        while pending and time.time() < deadline:
            time.sleep(0.2)
            pending = self.events_pending()
        if pending:
            self.violation(f"events: {pending} deliveries still pending {EVENTS_WAIT}s after the restart")
        events, faults = self.events.snapshot()
        for f in faults:
            self.violation(f"events: {f}")
        ids: dict[tuple, set] = {}  # (type, repository, subject) -> event ids

        def key(kind: str, repo: str, subject: str) -> tuple:
            return (EV + kind, repo, subject)
        for e in events:
            data = e.get("data") or {}
            ids.setdefault((e.get("type"), data.get("repository"), e.get("subject")), set()).add(e["id"])

        def count(kind: str, repo: str, subject: str) -> int:
            return len(ids.get(key(kind, repo, subject), ()))

        def exactly_one(what: str, kind: str, repo: str, subject: str) -> None:
            n = count(kind, repo, subject)
            if n != 1:
                self.violation(f"events: {what}: {n} {kind} event ids (expected exactly 1)")
            self.verified += 1
        with self.st.lock:
            manifests = dict(self.st.manifests)
            deleted = dict(self.st.deleted_manifests)
            artifacts = set(self.st.artifacts) | set(self.st.deleted_artifacts)
            deleted_artifacts = set(self.st.deleted_artifacts)
            assoc = set(self.st.assoc)
            signed = list(self.st.signed_copies)
        # Every acknowledged change: one event id.
        for d, m in manifests.items():
            exactly_one(f"push {m['repo']}@{d}", "manifest.pushed", m["repo"], d)
            moved = [i for i in ids.get(key("tag.moved", m["repo"], m["tag"]), ())
                     if self.events.events[i]["data"].get("digest") == d]
            if len(moved) != 1:
                self.violation(f"events: tag {m['repo']}:{m['tag']} -> {d}: {len(moved)} tag.moved ids")
        for d, repo in deleted.items():
            exactly_one(f"push {repo}@{d}", "manifest.pushed", repo, d)
            exactly_one(f"delete {repo}@{d}", "manifest.deleted", repo, d)
        rest = {}  # artifact id -> its REST repository, from its event
        for (kind, repo, subject) in ids:
            if kind == EV + "artifact.created" and str(repo).startswith("crash-rest-"):
                rest.setdefault(subject, set()).add(repo)
        for aid in artifacts:
            repos = rest.get(aid, set())
            if len(repos) != 1:
                self.violation(f"events: REST artifact {aid}: created in {sorted(repos)}")
                continue
            repo = next(iter(repos))
            exactly_one(f"REST create {aid}", "artifact.created", repo, aid)
            if aid in deleted_artifacts:
                exactly_one(f"REST delete {aid}", "artifact.deleted", repo, aid)
        for repo, aid in signed:
            n = sum(1 for i in ids.get(key("signature.stored", repo, aid), ()))
            if n != 1:
                self.violation(f"events: signed copy {repo}@{aid}: {n} signature.stored ids")
            self.verified += 1
        # The events balance with the store: no lost one, no phantom one.
        s = requests.Session()
        present: dict[tuple, bool] = {}

        def exists(repo: str, d: str) -> bool:
            if (repo, d) not in present:
                r = s.head(f"{self.url}/v2/{repo}/manifests/{d}", timeout=TIMEOUT)
                present[(repo, d)] = r.status_code == 200
            return present[(repo, d)]
        pairs = [("manifest.pushed", "manifest.deleted", lambda e: e["subject"]),
                 ("artifact.created", "artifact.deleted", lambda e: e["subject"]),
                 ("association.added", "association.removed", lambda e: e["data"]["digest"])]
        for up, down, manifest_of in pairs:
            balance: dict[tuple, int] = {}
            for e in events:
                t = e.get("type")
                if t in (EV + up, EV + down):
                    k = (e["data"]["repository"], manifest_of(e))
                    balance[k] = balance.get(k, 0) + (1 if t == EV + up else -1)
            for (repo, d), n in balance.items():
                there = exists(repo, d)
                if n not in (0, 1) or (n == 1) != there:
                    self.violation(f"events: {up}/{down} of {repo}@{d} balance {n}, "
                                   f"but it {'exists' if there else 'does not exist'}")
                self.verified += 1
        # Every acknowledged association: added, and still there.
        added = {(e["data"].get("host"), e["data"].get("artifact")): (e["data"]["repository"], e["data"]["digest"])
                 for e in events if e.get("type") == EV + "association.added"}
        for h, aid in assoc:
            where = added.get((h, aid))
            if where is None or not exists(*where):
                self.violation(f"events: acknowledged association {h} -> {aid} has no live association.added")
            self.verified += 1

    def run(self) -> int:
        started = time.time()
        rng = random.Random(self.args.seed)
        try:
            for rnd in range(1, self.args.rounds + 1):
                self.start()
                stop = threading.Event()
                workers = [Worker(w, self.url, self.st, stop, rnd, self.args.seed) for w in range(self.args.workers)]
                for w in workers:
                    w.start()
                delay = rng.uniform(1.0, 3.0)
                time.sleep(delay)
                self.kill()
                stop.set()
                for w in workers:
                    w.join(timeout=30)
                before = self.st.acknowledged
                self.start()
                self.verify()
                self.check_events()
                print(f"round {rnd}: killed after {delay:.2f}s; acknowledged so far {before}, "
                      f"verified so far {self.verified}, violations {len(self.violations)}", flush=True)
                self.kill()
            # A last clean start: everything still there, and scrub agrees.
            self.start()
            self.verify()
            self.check_events()
            scrub = subprocess.run([self.binary, "scrub"], env=dict(os.environ, BPF_REGISTRY_DATA_DIR=self.data,
                                                                    BPF_REGISTRY_LOG_LEVEL="ERROR"),
                                   capture_output=True, text=True)
            lines = [line for line in scrub.stdout.splitlines() if line.startswith("scrub:")]
            print("\n".join(lines[-6:]), flush=True)
            for line in lines:
                if "corrupt_blob" in line or "manifest_blob_missing" in line or "tag_dangling" in line:
                    self.violation(f"scrub: {line}")
        finally:
            self.kill()
        races = self.st.races
        print(f"upload races: {races['run']} run, PUT won {races['put_won']}, PATCH won {races['patch_won']}",
              flush=True)
        print(f"signing races: {self.st.sign_races} run, {len(self.st.signed_copies)} acknowledged signed copies",
              flush=True)
        print("fleet operations acknowledged: " + ", ".join(f"{k} {v}" for k, v in self.st.fleet_acked.items()),
              flush=True)
        if self.events:
            print(f"events: {self.events.deliveries} deliveries of {len(self.events.bodies)} event ids, "
                  f"{self.events.refused} answered 500 on purpose", flush=True)
        if self.st.sign_races and not self.st.signed_copies:
            self.violation("signing races ran but none stored a signed copy: nothing was checked")
        print(f"crash harness: rounds {self.args.rounds}, operations acknowledged {self.st.acknowledged}, "
              f"operations verified {self.verified}, violations {len(self.violations)} "
              f"({time.time() - started:.1f}s)", flush=True)
        if not self.args.keep:
            shutil.rmtree(self.data, ignore_errors=True)
            for leftover in (self.data + ".log", self.key):
                try:
                    os.remove(leftover)
                except OSError:
                    pass
        else:
            print(f"data dir kept: {self.data}")
        return 1 if self.violations else 0


# ---- replicas mode ------------------------------------------------------------
# N replicas on one PostgreSQL database and one S3 bucket prefix; every
# client request to a random live replica; a replica killed mid-push and a
# Garage node of three killed at random moments, both restarted later; the
# same checks through a surviving replica after each round, plus scrub as
# the on-store check and every replica answering the same.


class ReplicaHarness(Harness):
    def __init__(self, args) -> None:
        super().__init__(args)
        import replica_cluster as rc  # beside this file
        self.rc = rc
        self.garage = None
        self.balancer = None
        blob_store = args.blob_store
        if args.garage_dir:
            script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "garage.sh")
            self.garage = rc.GarageNodes(os.path.abspath(args.garage_dir), script)
            # The replicas' one S3 endpoint: a balancer over every node's S3
            # port, so it survives the loss of a node (as the README asks).
            self.balancer = rc.TcpBalancer(self.garage.s3_ports())
            self.garage.balancer = self.balancer
            blob_store = re.sub(r"endpoint=[^&]*", f"endpoint=http://127.0.0.1:{self.balancer.port}", blob_store)
        # A prefix of this run's own under the given one: runs never share keys.
        run_prefix = f"crash-{os.urandom(4).hex()}"
        head, _, query = blob_store.partition("?")
        blob_store = f"{head.rstrip('/')}/{run_prefix}?{query}"
        self.store_env = {"BPF_REGISTRY_METADATA": args.metadata, "BPF_REGISTRY_BLOB_STORE": blob_store}
        env = dict(os.environ, **self.store_env,
                   BPF_REGISTRY_LOG_LEVEL="WARN",
                   # The collector runs on every replica (one at a time, by
                   # the advisory lock) and is killed with them.
                   BPF_REGISTRY_GC_INTERVAL="1s",
                   BPF_REGISTRY_SIGNER="key",
                   BPF_REGISTRY_SIGNING_KEY=self.key)
        self.replicas = rc.Replicas(self.binary, args.replicas, env, self.data)
        self.replica_kills = 0
        self.replica_kills_mid_push = 0
        self.garage_kills = 0
        self.verified_through: list[int] = []

    def violation(self, msg: str) -> None:
        # The checks run after every round over everything acknowledged so
        # far: a fault found once is reported (and counted) once.
        if msg not in self.violations:
            super().violation(msg)

    def balanced_session_factory(self, seed: int):
        rng = random.Random(seed)
        return lambda: self.rc.BalancedSession(self.replicas, random.Random(rng.random()))

    # -- faults ------------------------------------------------------------
    def kill_replica(self, rng: random.Random) -> int:
        i, mid_push = self.replicas.pick_mid_push(rng, wait=1.0)
        self.replicas.kill(i)
        self.replica_kills += 1
        self.replica_kills_mid_push += mid_push
        print(f"  kill -9 replica {i + 1}{' mid-push' if mid_push else ''}", flush=True)
        return i

    def kill_garage_node(self, rng: random.Random) -> None:
        n = rng.randrange(1, self.garage.count + 1)
        self.garage.kill(n)
        self.garage_kills += 1
        print(f"  kill -9 garage node {n}", flush=True)

    def restart_garage_node(self) -> None:
        if self.garage and self.garage.down is not None:
            n = self.garage.down
            self.garage.restart()
            print(f"  garage node {n} back", flush=True)

    def restart_replicas(self) -> None:
        for i in range(self.replicas.count()):
            if i not in self.replicas.alive():
                self.replicas.start(i)
                print(f"  replica {i + 1} back", flush=True)

    # -- checks ------------------------------------------------------------
    def start_scrub(self) -> tuple:
        """The on-store check, started: rows against bytes and bytes against
        digests (`bpf-registry scrub` on the same metadata and blob store).
        It only reads, so it runs beside the HTTP checks."""
        scrub_dir = os.path.join(self.data, "scrub")
        os.makedirs(scrub_dir, exist_ok=True)
        env = dict(os.environ, **self.store_env, BPF_REGISTRY_DATA_DIR=scrub_dir, BPF_REGISTRY_LOG_LEVEL="ERROR")
        proc = subprocess.Popen([self.binary, "scrub", "--json"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        return proc, time.time()

    def finish_scrub(self, started: tuple) -> None:
        proc, t0 = started
        out, err = proc.communicate(timeout=600)
        self.scrub_seconds = time.time() - t0
        try:
            report = json.loads(out)
        except ValueError:
            self.violation(f"scrub did not run (exit {proc.returncode}): {err.strip()[:300]}")
            return
        for p in report.get("problems", []):
            self.violation(f"scrub: {p.get('kind')} {p.get('repository') or ''} {p.get('object')} {p.get('detail')}")
        self.scrub_blobs = report.get("blobs_checked", 0)
        self.verified += 1

    def fingerprint(self, url: str) -> dict:
        """What one replica answers to the derived views."""
        s = requests.Session()
        fp: dict = {}

        def pages(path: str, key: str) -> list:
            items, nxt = [], f"{url}{path}"
            while nxt:
                r = s.get(nxt, timeout=TIMEOUT)
                if r.status_code != 200:
                    return [f"status {r.status_code}"]
                items += r.json().get(key) or []
                link = r.headers.get("Link", "")
                nxt = f"{url}{link.split('<', 1)[1].split('>', 1)[0]}" if 'rel="next"' in link else ""
            return items

        fp["catalog"] = pages("/v2/_catalog?n=1000", "repositories")
        for repo in sorted(x for x in fp["catalog"] if x.startswith("crash")):
            fp[f"tags {repo}"] = sorted(pages(f"/v2/{repo}/tags/list?n=1000", "tags"))
        for h in (f"host-{i}" for i in range(4)):
            r = s.get(f"{url}/artifacts/for-host/{h}", timeout=TIMEOUT)
            fp[f"for-host {h}"] = sorted(a["id"] for a in r.json()["artifacts"]) if r.ok else r.status_code
        for d, m in sorted(self.st.manifests.items()):
            r = s.head(f"{url}/v2/{m['repo']}/manifests/{m['tag']}", headers={"Accept": OCI_MANIFEST},
                       timeout=TIMEOUT)
            fp[f"manifest {m['repo']}:{m['tag']}"] = (r.status_code, r.headers.get("Docker-Content-Digest"))
        for aid in sorted(self.st.artifacts):
            fp[f"artifact {aid}"] = s.get(f"{url}/artifacts/{aid}", timeout=TIMEOUT).status_code
        return fp

    def check_same(self) -> None:
        """Every replica answers the derived views alike."""
        live = self.replicas.alive()
        fps = {i: self.fingerprint(self.replicas.url(i)) for i in live}
        base = fps[live[0]]
        for i in live[1:]:
            diff = [k for k in set(base) | set(fps[i]) if base.get(k) != fps[i].get(k)]
            for k in sorted(diff)[:10]:
                self.violation(f"replicas {live[0] + 1} and {i + 1} differ on {k}: "
                               f"{str(base.get(k))[:150]} vs {str(fps[i].get(k))[:150]}")
            if len(diff) > 10:
                self.violation(f"replicas {live[0] + 1} and {i + 1} differ on {len(diff) - 10} more keys")
        self.verified += 1

    def verify_through(self, i: int) -> None:
        """The single mode's checks through replica `i` (the on-disk check
        replaced by scrub), then the 5xx answers clients got."""
        self.url = self.replicas.url(i)
        self.verified_through.append(i)
        s = requests.Session()
        scrub = self.start_scrub()
        self.check_manifests(s)
        self.check_blobs(s)
        self.check_artifacts(s)
        self.check_hosts(s)
        self.check_sessions(s)
        self.check_races(s)
        self.check_signatures(s)
        self.check_fleet(s)
        self.finish_scrub(scrub)
        with self.replicas.lock:
            errors, self.replicas.server_errors = self.replicas.server_errors, []
        for e in errors:
            self.violation(f"5xx: {e}{self.logged_cause(e)}")

    def check_blobs(self, s: requests.Session) -> None:
        """The acknowledged blobs that check_manifests did not just read
        (each read costs S3 GETs; the checks run after every round)."""
        read = {(m["repo"], d) for m in self.st.manifests.values() for d, _ in m["blobs"]}
        for (repo, d), data in list(self.st.blobs.items()):
            if (repo, d) in read:
                continue
            r = s.get(f"{self.url}/v2/{repo}/blobs/{d}", timeout=TIMEOUT)
            if r.status_code != 200 or r.content != data:
                self.violation(f"acknowledged blob {repo}@{d}: {r.status_code}")
            self.verified += 1

    def logged_cause(self, answer: str) -> str:
        """The replica's log line for the request id an answer names."""
        m = re.search(r"request id ([0-9a-f-]+)", answer)
        if not m:
            return ""
        for d in self.replicas.dirs:
            try:
                with open(d + ".log", errors="replace") as f:
                    for line in f:
                        if m.group(1) in line and "ERROR" in line:
                            return f"; logged: {line.strip()[:600]}"
            except OSError:
                continue
        return ""

    def join(self, workers: list) -> None:
        deadline = time.time() + 120
        for w in workers:
            w.join(timeout=max(0.1, deadline - time.time()))
        stuck = [w.wid for w in workers if w.is_alive()]
        if stuck:
            # Their requests never ended: checking now would race them.
            raise SystemExit(f"workers {stuck} still running 120 s after the round ended")

    def run_round(self, rnd: int, rng: random.Random) -> None:
        if self.garage:
            # One node down at a time, never two: the node restarted last
            # round rejoins before this round may kill another.
            waited = time.time()
            self.garage.wait_healthy()
            waited = time.time() - waited
            if waited > 1:
                print(f"  waited {waited:.1f}s for every garage node to see the others", flush=True)
        round_started = time.time()
        stop = threading.Event()
        factory = self.balanced_session_factory(self.args.seed * 7919 + rnd)
        workers = [Worker(w, self.rc.BALANCED, self.st, stop, rnd, self.args.seed, session_factory=factory)
                   for w in range(self.args.workers)]
        for w in workers:
            w.start()
        duration = rng.uniform(3.0, 6.0)
        # The faults of this round on a timeline: a replica killed mid-push
        # and a Garage node killed at random moments; each restarted later in
        # the round, or left down through the verification (then the checks
        # run on the survivors) and restarted after it.
        events = [(rng.uniform(0.3, duration * 0.6), "kill replica")]
        if rng.random() < 0.7:
            events.append((min(events[0][0] + rng.uniform(0.5, 2.0), duration), "restart replica"))
        if self.garage:
            g = rng.uniform(0.2, duration * 0.7)
            events.append((g, "kill garage"))
            if rng.random() < 0.6:
                events.append((min(g + rng.uniform(0.5, 2.5), duration), "restart garage"))
        started = time.time()
        for at, what in sorted(events):
            time.sleep(max(0.0, started + at - time.time()))
            if what == "kill replica":
                self.kill_replica(rng)
            elif what == "restart replica":
                self.restart_replicas()
            elif what == "kill garage":
                self.kill_garage_node(rng)
            else:
                self.restart_garage_node()
        time.sleep(max(0.0, started + duration - time.time()))
        stop.set()
        self.join(workers)
        load_seconds = time.time() - round_started
        before = self.st.acknowledged
        down = [i for i in range(self.replicas.count()) if i not in self.replicas.alive()]
        garage_down = self.garage.down if self.garage else None
        t0 = time.time()
        self.verify_through(rng.choice(self.replicas.alive()))
        t1 = time.time()
        self.restart_garage_node()
        self.restart_replicas()
        t2 = time.time()
        self.check_same()
        t3 = time.time()
        print(f"  load {load_seconds:.1f}s, checks {t1 - t0:.1f}s (scrub {self.scrub_seconds:.1f}s), restarts {t2 - t1:.1f}s, "
              f"replicas compared {t3 - t2:.1f}s", flush=True)
        print(f"round {rnd}: {duration:.1f}s of load; verified through replica {self.verified_through[-1] + 1}"
              f"{f' with replica {down[0] + 1} down' if down else ''}"
              f"{f' with garage node {garage_down} down' if garage_down else ''}; "
              f"acknowledged so far {before}, verified so far {self.verified}, "
              f"violations {len(self.violations)}", flush=True)

    def run(self) -> int:
        started = time.time()
        rng = random.Random(self.args.seed)
        try:
            for i in range(self.replicas.count()):
                self.replicas.start(i)
            for rnd in range(1, self.args.rounds + 1):
                self.run_round(rnd, rng)
        finally:
            self.replicas.kill_all()
            if self.garage:
                self.garage.close()
            if self.balancer:
                self.balancer.close()
        races = self.st.races
        print(f"upload races: {races['run']} run, PUT won {races['put_won']}, PATCH won {races['patch_won']}",
              flush=True)
        print(f"signing races: {self.st.sign_races} run, {len(self.st.signed_copies)} acknowledged signed copies",
              flush=True)
        if self.st.sign_races and not self.st.signed_copies:
            self.violation("signing races ran but none stored a signed copy: nothing was checked")
        print("fleet operations acknowledged: " + ", ".join(f"{k} {v}" for k, v in self.st.fleet_acked.items()),
              flush=True)
        if self.replica_kills_mid_push == 0:
            self.violation("no replica was killed mid-push: the fault was not exercised")
        print(f"crash harness (replicas): rounds {self.args.rounds}, replicas {self.replicas.count()}, "
              f"operations acknowledged {self.st.acknowledged}, operations verified {self.verified}, "
              f"violations {len(self.violations)}, replica kills {self.replica_kills} "
              f"({self.replica_kills_mid_push} mid-push), garage-node kills {self.garage_kills}, "
              f"requests retried on another replica {self.replicas.retried}, "
              f"blobs re-hashed by the last scrub {getattr(self, 'scrub_blobs', 0)} "
              f"({time.time() - started:.1f}s)", flush=True)
        if not self.args.keep:
            shutil.rmtree(self.data, ignore_errors=True)
            try:
                os.remove(self.key)
            except OSError:
                pass
        else:
            print(f"data dirs kept: {self.data}")
        return 1 if self.violations else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default="target/release/bpf-registry")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.add_argument("--events", action="store_true",
                   help="deliver CloudEvents to a receiver thread and check one event id per acknowledged change")
    p.add_argument("--replicas", type=int, default=0,
                   help="replicas mode: N servers on --metadata and --blob-store (default: one server, fs + SQLite)")
    p.add_argument("--metadata", help="replicas mode: postgres://... URL of an existing database")
    p.add_argument("--blob-store", help="replicas mode: s3://... URL (this run adds a prefix of its own)")
    p.add_argument("--garage-dir", help="replicas mode: the DIR of `garage.sh start3 DIR`; its nodes are "
                                        "killed and restarted, and the replicas reach them through a balancer")
    args = p.parse_args()
    if not os.access(args.binary, os.X_OK):
        print(f"no executable at {args.binary} (cargo build --release first)")
        return 1
    if args.replicas:
        if args.replicas < 2 or not (args.metadata or "").startswith("postgres://") \
                or not (args.blob_store or "").startswith("s3://"):
            p.error("--replicas N (N >= 2) needs --metadata postgres://... and --blob-store s3://...")
        if args.events:
            p.error("--events checks the outbox of the embedded store: not with --replicas")
        print(f"crash harness: seed {args.seed}, {args.rounds} rounds, {args.workers} workers, "
              f"{args.replicas} replicas{', garage ' + args.garage_dir if args.garage_dir else ''}", flush=True)
        return ReplicaHarness(args).run()
    print(f"crash harness: seed {args.seed}, {args.rounds} rounds, {args.workers} workers", flush=True)
    return Harness(args).run()


if __name__ == "__main__":
    sys.exit(main())
