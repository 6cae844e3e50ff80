#!/usr/bin/env python3
"""Round-trip a BPF artifact through a registry with the oras-py client.

Pushes an OCI artifact with artifactType ``application/vnd.aegisflux.bpf.artifact.v1``,
one layer ``prog.tar.zst`` (``application/vnd.oci.image.layer.v1.tar+zstd``) and
manifest annotations, pulls it back with oras-py's ``pull`` into a temp dir,
compares the bytes, then fetches the raw manifest and checks that artifactType
and annotations survived. Plain http ("insecure") mode.

oras-py (0.2.x) ``push`` cannot set ``artifactType``, so the push is done with
its lower-level ``upload_blob`` / ``upload_manifest`` on a manifest built here;
the pull uses oras-py's ``pull``.

Usage (venv python from conformance/install-deps.sh):

    python conformance/oras_roundtrip.py --registry 127.0.0.1:5000
        [--repo bpf/oras-roundtrip] [--tag v1] [--digest-out FILE]

Prints one ``PASS step`` / ``FAIL step: reason`` line per step and exits 1 on
any failure. ``--digest-out`` receives the pushed manifest digest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import uuid

import oras.client
import oras.oci
import requests

ARTIFACT_TYPE = "application/vnd.aegisflux.bpf.artifact.v1"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
TITLE = "org.opencontainers.image.title"


class StepFailed(Exception):
    pass


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", required=True, help="host:port, e.g. 127.0.0.1:5000")
    ap.add_argument("--repo", default="bpf/oras-roundtrip")
    ap.add_argument("--tag", default="v1")
    ap.add_argument("--digest-out", help="write the pushed manifest digest here")
    args = ap.parse_args()

    target = f"{args.registry}/{args.repo}:{args.tag}"
    client = oras.client.OrasClient(hostname=args.registry, insecure=True)
    container = client.get_container(target)
    work = tempfile.mkdtemp(prefix="oras-roundtrip-")
    annotations = {
        "org.opencontainers.image.description": "bpf-registry interop test artifact",
        "io.aegisflux.bpf.program": "xdp_drop",
        "io.aegisflux.bpf.nonce": uuid.uuid4().hex,
    }
    results: list[tuple[str, str | None]] = []

    def step(name: str, fn) -> object:
        try:
            out = fn()
            results.append((name, None))
            print(f"PASS {name}", flush=True)
            return out
        except Exception as e:  # report any failure as this step's reason
            reason = f"{e.__class__.__name__}: {e}" if not isinstance(e, StepFailed) else str(e)
            results.append((name, reason))
            print(f"FAIL {name}: {reason}", flush=True)
            return None

    # --- build the files ---------------------------------------------------------
    src = os.path.join(work, "src")
    os.makedirs(src)
    layer_path = os.path.join(src, "prog.tar.zst")
    with open(layer_path, "wb") as f:
        f.write(os.urandom(4096 + 123))
    config_path = os.path.join(src, "config.json")
    with open(config_path, "wb") as f:
        f.write(b"{}")

    def push() -> str:
        layer = oras.oci.NewLayer(layer_path, media_type=LAYER_MEDIA_TYPE)
        layer["annotations"] = {TITLE: "prog.tar.zst"}
        config = {"mediaType": EMPTY_MEDIA_TYPE, "digest": sha256_file(config_path), "size": 2}
        for path, desc in ((layer_path, layer), (config_path, config)):
            r = client.upload_blob(path, container, desc)
            if r.status_code not in (200, 201, 202):
                raise StepFailed(f"blob upload {desc['digest'][:19]} -> {r.status_code}: {r.text[:200]}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": config,
            "layers": [layer],
            "annotations": annotations,
        }
        r = client.upload_manifest(manifest, container)
        if r.status_code != 201:
            raise StepFailed(f"manifest PUT -> {r.status_code}: {r.text[:200]}")
        digest = r.headers.get("Docker-Content-Digest")
        if not digest:
            raise StepFailed("manifest PUT answer has no Docker-Content-Digest")
        return digest

    digest = step("oras_push_artifact", push)

    def pull() -> None:
        out = os.path.join(work, "pulled")
        files = client.pull(target=target, outdir=out)
        names = sorted(os.path.basename(p) for p in files)
        if names != ["prog.tar.zst"]:
            raise StepFailed(f"oras pull returned {names}, want ['prog.tar.zst']")
        with open(layer_path, "rb") as a, open(files[0], "rb") as b:
            if a.read() != b.read():
                raise StepFailed("pulled prog.tar.zst differs from pushed bytes")

    step("oras_pull_compare_bytes", pull)

    def raw_manifest() -> None:
        url = f"http://{args.registry}/v2/{args.repo}/manifests/{args.tag}"
        r = requests.get(url, headers={"Accept": MANIFEST_MEDIA_TYPE}, timeout=30)
        if r.status_code != 200:
            raise StepFailed(f"GET manifest -> {r.status_code}")
        if digest and "sha256:" + hashlib.sha256(r.content).hexdigest() != digest:
            raise StepFailed("raw manifest bytes do not hash to the pushed digest")
        doc = json.loads(r.content)
        if doc.get("artifactType") != ARTIFACT_TYPE:
            raise StepFailed(f"artifactType {doc.get('artifactType')!r}, want {ARTIFACT_TYPE!r}")
        if doc.get("annotations") != annotations:
            raise StepFailed(f"annotations {doc.get('annotations')!r}, want {annotations!r}")
        layers = doc.get("layers") or []
        if len(layers) != 1 or layers[0].get("mediaType") != LAYER_MEDIA_TYPE:
            raise StepFailed(f"layers {layers!r}: want one {LAYER_MEDIA_TYPE}")
        if (layers[0].get("annotations") or {}).get(TITLE) != "prog.tar.zst":
            raise StepFailed("layer title annotation lost")

    step("oras_manifest_artifacttype_annotations", raw_manifest)

    if args.digest_out and digest:
        with open(args.digest_out, "w") as f:
            f.write(str(digest))
    return 1 if any(reason for _, reason in results) else 0


if __name__ == "__main__":
    sys.exit(main())
