#!/usr/bin/env python3
"""gen_store.py - write a large bpf-registry store directly (no server requests).

Writes what `repos * versions` REST creates (`POST /artifacts`) and as many
host associations (`POST /artifacts/{id}/hosts`) leave behind, in the
current layout: blob bytes in the filesystem blob store
(`blobs/sha256/<hex>`, src/storage/paths.rs) and every row in the embedded
SQLite metadata store (`metadata.db`, src/metadata/schema.rs):

  repositories       one per repository
  blob_links         layer and config of each artifact, the {} blob once per repository
  manifests          the artifact manifest; the association manifest with its
                     subject, artifactType and referrer descriptor
  manifest_refs      artifact -> config, layer; association -> {}
  tags               <version> -> the artifact manifest
  artifacts          indexed columns + the record JSON (src/artifacts/index.rs)
  artifact_facets    kernel_version
  host_associations  association -> (subject, host)
  fleet_changes      the change counters the commits bumped (repo: 2 per
                     artifact, host: 1 per association)

The schema itself (tables, indexes, the `meta` rows a first start writes)
comes from the binary: the store is opened once with `bpf-registry scrub`
on an empty data directory before any row is inserted, so it is exactly
what that binary creates. `--verify` checks the generator against the
server: it generates a small store, creates the same artifacts and
associations through the REST API of a real server, and compares every
table (digests, sizes and times normalized), then runs `scrub` on the
generated store.

Artifact i (repo r, version v, i = r * versions + v) is associated with host
`host-<i mod hosts>`, so every host has repos * versions / hosts artifacts
spread over many repositories. Layers are real one-entry tar+zstd archives
(a stored zstd block) of 32 unique bytes, named as the REST create names them.

Written without fsync (a cache, regenerated if missing) into
<out>.tmp-<pid>, renamed to <out> when complete; <out>/meta.json (outside the
store root <out>/store) lists counts and samples for validation.

Usage: gen_store.py --out DIR --binary BPF_REGISTRY [--repos 1000] [--versions 100] [--hosts 1000]
       gen_store.py --verify --binary BPF_REGISTRY
"""

import argparse
import base64
import glob
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

# Bumped when what this writes changes; the schema sources are in the key too.
GEN_VERSION = 2

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# What decides the tables and the record: a change regenerates the cache.
SCHEMA_SOURCES = ["src/metadata/schema.rs", "src/metadata/fleet.rs", "src/metadata/outbox/*.rs",
                  "src/artifacts/model.rs"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
ARTIFACT_TYPE = "application/vnd.aegisflux.bpf.artifact.v1"
CONFIG_TYPE = "application/vnd.aegisflux.bpf.config.v1+json"
ASSOC_TYPE = "application/vnd.aegisflux.bpf.host-association.v1"
HOST_ANNOTATION = "io.aegisflux.bpf.host-id"
EMPTY = b"{}"
CREATED = "2026-01-01T00:00:00.000000000Z"
KERNEL = "6.1.0"


def cjson(obj):
    """Compact JSON like serde_json::to_vec."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sha(b):
    return hashlib.sha256(b).hexdigest()


def repo_name(r):
    return f"bench-store/prog-{r:04d}"


def host_name(h):
    return f"host-{h:04d}"


def version_name(v):
    return f"1.0.{v}"


def schema_hash():
    h = hashlib.sha256()
    for pattern in SCHEMA_SOURCES:
        for p in sorted(glob.glob(os.path.join(ROOT, pattern))):
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:10]


def key(repos, versions, hosts):
    return f"v{GEN_VERSION}-s{schema_hash()}-r{repos}-v{versions}-h{hosts}"


def zstd_stored(data):
    """A zstd frame holding `data` in one raw (stored) block."""
    assert len(data) < 128 * 1024
    # Frame header: single segment, 4-byte content size, no checksum.
    frame = b"\x28\xb5\x2f\xfd" + bytes([0xA0]) + len(data).to_bytes(4, "little")
    # Block header: last block, type raw, size.
    return frame + ((len(data) << 3) | 1).to_bytes(3, "little") + data


def payload(r, v):
    return hashlib.sha256(f"bench-payload/{repo_name(r)}/{version_name(v)}".encode()).digest()


def tar_one(entry, data):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo(entry)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def artifact(r, v):
    """(layer bytes, config bytes, config object) of artifact (r, v)."""
    name, version = repo_name(r), version_name(v)
    layer = zstd_stored(tar_one(name.rsplit("/", 1)[-1] + ".bin", payload(r, v)))
    config = {
        "name": name,
        "version": version,
        "description": f"benchmark artifact {r}/{v}",
        "type": "map",
        "architecture": "x86_64",
        "kernel_version": KERNEL,
        "metadata": {},
        "tags": [],
        "created_at": CREATED,
        "ebpf": None,
    }
    return layer, cjson(config), config


def artifact_manifest(r, v, layer, config):
    name, version = repo_name(r), version_name(v)
    return cjson(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": "sha256:" + sha(config), "size": len(config)},
            "layers": [
                {
                    "mediaType": LAYER_TYPE,
                    "digest": "sha256:" + sha(layer),
                    "size": len(layer),
                    "annotations": {"org.opencontainers.image.title": f"{name.replace('/', '_')}-{version}.tar.zst"},
                }
            ],
            "annotations": {
                "io.aegisflux.bpf.architecture": "x86_64",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.title": name,
                "org.opencontainers.image.description": f"benchmark artifact {r}/{v}",
                "org.opencontainers.image.created": CREATED,
                "io.aegisflux.bpf.type": "map",
                "io.aegisflux.bpf.kernel-version": KERNEL,
            },
        }
    )


def association_manifest(subject_hex, subject_size, host):
    empty_desc = {"mediaType": OCI_EMPTY, "digest": "sha256:" + sha(EMPTY), "size": len(EMPTY)}
    return cjson(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ASSOC_TYPE,
            "config": empty_desc,
            "layers": [empty_desc],
            "subject": {"mediaType": OCI_MANIFEST, "digest": "sha256:" + subject_hex, "size": subject_size},
            "annotations": {HOST_ANNOTATION: host},
        }
    )


def init_store(binary, store):
    """The empty store the binary creates (schema, `meta` rows)."""
    os.makedirs(store, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "BPF_REGISTRY_DATA_DIR": store,
           "BPF_REGISTRY_LOG_LEVEL": "WARN"}
    p = subprocess.run([binary, "scrub", "--json"], env=env, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"gen_store: `{binary} scrub` on an empty store failed ({p.returncode}): "
                           f"{p.stderr.strip()[-500:]}")


class Writer:
    def __init__(self, store):
        self.blobs = os.path.join(store, "blobs", "sha256")
        os.makedirs(self.blobs, exist_ok=True)
        self.files = 0
        self.bytes = 0

    def blob(self, data):
        h = sha(data)
        fd = os.open(os.path.join(self.blobs, h), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self.files += 1
        self.bytes += len(data)
        return h


def write_store(store, repos, versions, hosts, quiet=False, now=None):
    """Blobs and rows of the artifacts into an initialized store."""
    now = int(time.time()) if now is None else now
    w = Writer(store)
    empty = "sha256:" + w.blob(EMPTY)
    db = sqlite3.connect(os.path.join(store, "metadata.db"))
    db.execute("PRAGMA synchronous = OFF")
    rows = {t: [] for t in ("repositories", "blob_links", "manifests", "manifest_refs", "tags", "artifacts",
                            "artifact_facets", "host_associations", "fleet_changes")}
    samples, per_host = [], {}
    t0 = time.monotonic()
    total = repos * versions

    def flush():
        for t, rs in rows.items():
            if rs:
                marks = ",".join("?" * len(rs[0]))
                db.executemany(f"INSERT INTO {t} VALUES ({marks})", rs)
                rs.clear()

    for r in range(repos):
        name = repo_name(r)
        rows["repositories"].append((name, now))
        rows["blob_links"].append((name, empty, now))
        rows["fleet_changes"].append(("repo:" + name, 2 * versions))
        for v in range(versions):
            i = r * versions + v
            version = version_name(v)
            layer, config, config_obj = artifact(r, v)
            lh, ch = "sha256:" + w.blob(layer), "sha256:" + w.blob(config)
            m = artifact_manifest(r, v, layer, config)
            mh = "sha256:" + w.blob(m)
            host = host_name(i % hosts)
            a = association_manifest(mh[7:], len(m), host)
            ah = "sha256:" + w.blob(a)
            desc = cjson({"mediaType": OCI_MANIFEST, "digest": ah, "size": len(a), "artifactType": ASSOC_TYPE,
                          "annotations": {HOST_ANNOTATION: host}}).decode()
            record = cjson({"manifest_size": len(m), "config": config_obj, "layer_digest": lh,
                            "layer_size": len(layer), "layer_media_type": LAYER_TYPE}).decode()
            rows["blob_links"] += [(name, lh, now), (name, ch, now)]
            rows["manifests"] += [(name, mh, OCI_MANIFEST, len(m), None, None, None, now),
                                  (name, ah, OCI_MANIFEST, len(a), mh, ASSOC_TYPE, desc, now)]
            rows["manifest_refs"] += [(name, mh, ch), (name, mh, lh), (name, ah, empty)]
            rows["tags"].append((name, version, mh, now))
            rows["artifacts"].append((name, mh, name, version, "map", "x86_64", now, record))
            rows["artifact_facets"].append((name, mh, "kernel_version", KERNEL))
            rows["host_associations"].append((name, ah, mh, host))
            per_host[host] = per_host.get(host, 0) + 1
            if v == 0 and r % max(1, repos // 5) == 0:
                samples.append({"id": mh, "name": name, "version": version, "host": host, "association": ah})
        if len(rows["manifests"]) >= 20000:
            flush()
        if not quiet and (r + 1) % max(1, repos // 10) == 0:
            print(f"gen_store: {(r + 1) * versions}/{total} artifacts, {w.files} blobs, "
                  f"{time.monotonic() - t0:.0f} s", flush=True)
    rows["fleet_changes"] += [("host:" + h, n) for h, n in sorted(per_host.items())]
    flush()
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    counts = sorted(set(per_host.values()))
    return {"samples": samples, "files": w.files, "bytes": w.bytes,
            "artifacts_per_host": counts[0] if len(counts) == 1 else counts}


def generate(out, repos, versions, hosts, binary, quiet=False):
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    store = os.path.join(tmp, "store")
    t0 = time.monotonic()
    init_store(binary, store)
    w = write_store(store, repos, versions, hosts, quiet)
    meta = {
        "generator_version": GEN_VERSION,
        "schema_sources": schema_hash(),
        "repos": repos,
        "versions": versions,
        "hosts": hosts,
        "artifacts": repos * versions,
        "associations": repos * versions,
        "artifacts_per_host": w["artifacts_per_host"],
        "host_pattern": "host-%04d",
        "samples": w["samples"],
        "files": w["files"],
        "bytes": w["bytes"],
        "seconds": round(time.monotonic() - t0, 1),
    }
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return meta


# --------------------------------------------------------------------------
# --verify: the generator against the server


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def via_api(binary, store, repos, versions, hosts):
    """The same artifacts and associations, created through the REST API."""
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "BPF_REGISTRY_DATA_DIR": store,
           "BPF_REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}", "BPF_REGISTRY_LOG_LEVEL": "WARN"}
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def call(method, path, body):
        req = urllib.request.Request(base + path, data=cjson(body), method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as f:
            return json.loads(f.read())

    try:
        for _ in range(500):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.02)
        for r in range(repos):
            for v in range(versions):
                a = call("POST", "/artifacts", {
                    "name": repo_name(r), "version": version_name(v), "description": f"benchmark artifact {r}/{v}",
                    "type": "map", "architecture": "x86_64", "kernel_version": KERNEL,
                    "data": base64.b64encode(payload(r, v)).decode()})
                call("POST", f"/artifacts/{a['id']}/hosts", {"host_id": host_name((r * versions + v) % hosts)})
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def normalized(db_path):
    """Every table's rows, with digests, sizes, times and created stamps normalized."""
    db = sqlite3.connect(db_path)
    out = {}
    for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"):
        if t == "meta":
            continue
        cols = [c[1] for c in db.execute(f"PRAGMA table_info({t})")]
        rows = []
        for row in db.execute(f"SELECT * FROM {t}"):
            norm = []
            for c, v in zip(cols, row):
                if isinstance(v, int) and (c.endswith("_at") or c == "size"):
                    v = "N"
                elif isinstance(v, str):
                    v = re.sub(r"sha256:[0-9a-f]{64}", "sha256:D", v)
                    v = re.sub(r'"(manifest_size|layer_size|size)":\d+', r'"\1":N', v)
                    v = re.sub(r'"created_at":"[^"]*"', '"created_at":"C"', v)
                norm.append(v)
            rows.append(tuple("" if x is None else x for x in norm))
        out[t] = sorted(rows, key=repr)
    meta = dict(db.execute("SELECT key, value FROM meta"))
    db.close()
    return out, sorted(meta)


def verify(binary):
    repos, versions, hosts = 3, 2, 2
    with tempfile.TemporaryDirectory(prefix="gen-store-verify-") as tmp:
        gen, api = os.path.join(tmp, "gen"), os.path.join(tmp, "api")
        init_store(binary, gen)
        write_store(gen, repos, versions, hosts, quiet=True)
        via_api(binary, api, repos, versions, hosts)
        g, gm = normalized(os.path.join(gen, "metadata.db"))
        a, am = normalized(os.path.join(api, "metadata.db"))
        problems = []
        if gm != am:
            problems.append(f"meta keys: generated {gm}, API {am}")
        for t in sorted(set(g) | set(a)):
            if g.get(t) != a.get(t):
                problems.append(f"table {t}:\n  generated {g.get(t)}\n  API       {a.get(t)}")
        env = {"PATH": os.environ.get("PATH", ""), "BPF_REGISTRY_DATA_DIR": gen, "BPF_REGISTRY_LOG_LEVEL": "WARN"}
        p = subprocess.run([binary, "scrub", "--json"], env=env, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            problems.append(f"scrub of the generated store: exit {p.returncode}: {p.stdout[-800:]}")
        gen_blobs = len(os.listdir(os.path.join(gen, "blobs", "sha256")))
        api_blobs = len(os.listdir(os.path.join(api, "blobs", "sha256")))
        if gen_blobs != api_blobs:
            problems.append(f"blobs: generated {gen_blobs}, API {api_blobs}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output folder (store in OUT/store, OUT/meta.json)")
    ap.add_argument("--binary", required=True, help="the bpf-registry binary whose schema the store gets")
    ap.add_argument("--repos", type=int, default=1000)
    ap.add_argument("--versions", type=int, default=100)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--verify", action="store_true", help="compare the generator with REST creates, then exit")
    a = ap.parse_args()
    if a.verify:
        problems = verify(a.binary)
        for p in problems:
            print("gen_store --verify: " + p)
        print("gen_store --verify: " + ("FAILED" if problems else "generated rows match the REST API's; scrub clean"))
        sys.exit(1 if problems else 0)
    if not a.out:
        sys.exit("gen_store: --out is required")
    if a.repos < 1 or a.versions < 1 or a.hosts < 1 or a.hosts > 10000:
        sys.exit("gen_store: --repos/--versions must be >= 1 and 1 <= --hosts <= 10000")
    meta = generate(a.out, a.repos, a.versions, a.hosts, a.binary, a.quiet)
    print(
        f"gen_store: wrote {meta['artifacts']} artifacts, {meta['associations']} associations, "
        f"{meta['files']} blobs in {meta['seconds']} s to {a.out}/store"
    )


if __name__ == "__main__":
    main()
