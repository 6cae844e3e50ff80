#!/usr/bin/env python3
"""gen_store.py - write a large bpf-registry store directly on disk (no server).

Writes the filesystem layout of src/storage/paths.rs with what the REST
facade (src/artifacts/service.rs) would have written for
`repos * versions` artifacts and one host association per artifact:

  blobs/sha256/<hex>                          layer, config, manifests, the {} blob
  repositories/<repo>/_tags/<version>         "sha256:<manifest hex>"
  repositories/<repo>/_manifests/sha256/<hex> "sha256:<hex>" (artifacts and associations)
  repositories/<repo>/_layers/sha256/<hex>    "sha256:<hex>" (layer, config, {})
  repositories/<repo>/_referrers/sha256/<artifact hex>/<association hex>
                                              the association's descriptor JSON

Artifact i (repo r, version v, i = r * versions + v) is associated with host
`host-<i mod hosts>`, so every host has repos * versions / hosts artifacts
spread over many repositories.

Artifacts: image manifest, artifactType application/vnd.aegisflux.bpf.artifact.v1,
config application/vnd.aegisflux.bpf.config.v1+json (the BpfConfig fields),
one layer application/vnd.oci.image.layer.v1.tar+zstd (small unique bytes; the
server never decompresses it), annotations as manifest_annotations() sets them.
Associations: image manifest, artifactType
application/vnd.aegisflux.bpf.host-association.v1, empty config and layer
(application/vnd.oci.empty.v1+json, the 2-byte {} blob), subject = the
artifact manifest, annotation io.aegisflux.bpf.host-id.

Files are written without fsync (this is a cache, regenerated if missing) into
<out>.tmp-<pid>, renamed to <out> when complete; <out>/meta.json (outside the
store root <out>/store) lists counts and samples for validation.

Usage: gen_store.py --out DIR [--repos 1000] [--versions 100] [--hosts 1000]
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import time

GEN_VERSION = 1

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
ARTIFACT_TYPE = "application/vnd.aegisflux.bpf.artifact.v1"
CONFIG_TYPE = "application/vnd.aegisflux.bpf.config.v1+json"
ASSOC_TYPE = "application/vnd.aegisflux.bpf.host-association.v1"
HOST_ANNOTATION = "io.aegisflux.bpf.host-id"
EMPTY = b"{}"
CREATED = "2026-01-01T00:00:00Z"


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


def key(repos, versions, hosts):
    return f"v{GEN_VERSION}-r{repos}-v{versions}-h{hosts}"


class Writer:
    def __init__(self, root):
        self.root = root
        self.blobs = os.path.join(root, "blobs", "sha256")
        os.makedirs(self.blobs)
        self.files = 0
        self.bytes = 0

    def write(self, path, data):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self.files += 1
        self.bytes += len(data)

    def blob(self, data):
        h = sha(data)
        self.write(os.path.join(self.blobs, h), data)
        return h


def artifact(r, v):
    """(layer bytes, config bytes) of artifact (r, v)."""
    name, version = repo_name(r), version_name(v)
    seed = hashlib.sha256(f"bench-layer/{name}/{version}".encode()).digest()
    # 28 B5 2F FD: the zstd magic, so the bytes look like what the facade stores.
    layer = b"\x28\xb5\x2f\xfd" + seed * 8
    config = cjson(
        {
            "name": name,
            "version": version,
            "description": f"benchmark artifact {r}/{v}",
            "type": "map",
            "architecture": "x86_64",
            "kernel_version": "6.1.0",
            "metadata": {},
            "tags": [],
            "created_at": CREATED,
            "ebpf": None,
        }
    )
    return layer, config


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
                "org.opencontainers.image.title": name,
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.description": f"benchmark artifact {r}/{v}",
                "org.opencontainers.image.created": CREATED,
                "io.aegisflux.bpf.type": "map",
                "io.aegisflux.bpf.architecture": "x86_64",
                "io.aegisflux.bpf.kernel-version": "6.1.0",
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


def generate(out, repos, versions, hosts, quiet=False):
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    store = os.path.join(tmp, "store")
    w = Writer(store)
    empty_hex = w.blob(EMPTY)
    t0 = time.monotonic()
    samples = []
    per_host = {}
    total = repos * versions
    for r in range(repos):
        name = repo_name(r)
        rdir = os.path.join(store, "repositories", *name.split("/"))
        tags = os.path.join(rdir, "_tags")
        mans = os.path.join(rdir, "_manifests", "sha256")
        lays = os.path.join(rdir, "_layers", "sha256")
        refs = os.path.join(rdir, "_referrers", "sha256")
        for d in (tags, mans, lays, refs):
            os.makedirs(d)
        w.write(os.path.join(lays, empty_hex), ("sha256:" + empty_hex).encode())
        for v in range(versions):
            i = r * versions + v
            layer, config = artifact(r, v)
            lh, ch = w.blob(layer), w.blob(config)
            w.write(os.path.join(lays, lh), ("sha256:" + lh).encode())
            w.write(os.path.join(lays, ch), ("sha256:" + ch).encode())
            m = artifact_manifest(r, v, layer, config)
            mh = w.blob(m)
            w.write(os.path.join(mans, mh), ("sha256:" + mh).encode())
            w.write(os.path.join(tags, version_name(v)), ("sha256:" + mh).encode())
            host = host_name(i % hosts)
            a = association_manifest(mh, len(m), host)
            ah = w.blob(a)
            w.write(os.path.join(mans, ah), ("sha256:" + ah).encode())
            rdir_sub = os.path.join(refs, mh)
            os.mkdir(rdir_sub)
            desc = cjson(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": "sha256:" + ah,
                    "size": len(a),
                    "artifactType": ASSOC_TYPE,
                    "annotations": {HOST_ANNOTATION: host},
                }
            )
            w.write(os.path.join(rdir_sub, ah), desc)
            per_host[host] = per_host.get(host, 0) + 1
            if v == 0 and r % max(1, repos // 5) == 0:
                samples.append(
                    {"id": "sha256:" + mh, "name": name, "version": version_name(v), "host": host,
                     "association": "sha256:" + ah}
                )
        if not quiet and (r + 1) % max(1, repos // 10) == 0:
            done = (r + 1) * versions
            el = time.monotonic() - t0
            print(f"gen_store: {done}/{total} artifacts, {w.files} files, {el:.0f} s", flush=True)
    counts = sorted(set(per_host.values()))
    meta = {
        "generator_version": GEN_VERSION,
        "repos": repos,
        "versions": versions,
        "hosts": hosts,
        "artifacts": total,
        "associations": total,
        "artifacts_per_host": counts[0] if len(counts) == 1 else counts,
        "host_pattern": "host-%04d",
        "samples": samples,
        "files": w.files,
        "bytes": w.bytes,
        "seconds": round(time.monotonic() - t0, 1),
    }
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (store in OUT/store, OUT/meta.json)")
    ap.add_argument("--repos", type=int, default=1000)
    ap.add_argument("--versions", type=int, default=100)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    if a.repos < 1 or a.versions < 1 or a.hosts < 1 or a.hosts > 10000:
        sys.exit("gen_store: --repos/--versions must be >= 1 and 1 <= --hosts <= 10000")
    meta = generate(a.out, a.repos, a.versions, a.hosts, a.quiet)
    print(
        f"gen_store: wrote {meta['artifacts']} artifacts, {meta['associations']} associations, "
        f"{meta['files']} files in {meta['seconds']} s to {a.out}/store"
    )


if __name__ == "__main__":
    main()
