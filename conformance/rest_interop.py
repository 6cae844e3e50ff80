#!/usr/bin/env python3
"""REST facade <-> OCI interop with the oras-py client.

Against a running bpf-registry:

1. creates an artifact through ``POST /artifacts`` (the seed README's body),
2. pulls ``<host>/<name>:<version>`` with oras-py and checks the pulled
   ``<name>-<version>.tar.zst`` is byte-identical to
   ``GET /artifacts/{id}/binary``,
3. pushes a host-association referrer (``subject`` = the artifact manifest,
   ``artifactType`` ``application/vnd.aegisflux.bpf.host-association.v1``,
   empty config and layer, annotation ``io.aegisflux.bpf.host-id``) with
   oras-py's lower-level ``upload_blob`` / ``upload_manifest`` and checks it
   appears in ``GET /artifacts/for-host/<host>`` and ``/artifacts/{id}/hosts``,
4. the other way round: pushes an artifact with oras-py (our artifactType and
   config media type) and checks ``GET /artifacts/{digest}`` describes it and
   ``/binary`` gives back the pushed layer.

oras-py (0.2.x) ``push`` cannot set ``artifactType`` or ``subject``, so the
pushes use ``upload_blob`` / ``upload_manifest`` on manifests built here (as
conformance/oras_roundtrip.py does); the pull uses oras-py's ``pull``.

Usage (venv python from conformance/install-deps.sh):

    ${BPF_VENV:-$HOME/.cache/bpf-registry-venv}/bin/python \\
        conformance/rest_interop.py --url http://127.0.0.1:PORT

Prints one ``PASS step`` / ``FAIL step: reason`` line per step, then
``N passed, N failed``; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import tempfile
import urllib.parse
import uuid

import oras.client
import oras.oci
import requests

ARTIFACT_TYPE = "application/vnd.aegisflux.bpf.artifact.v1"
BPF_CONFIG = "application/vnd.aegisflux.bpf.config.v1+json"
HOST_ASSOCIATION = "application/vnd.aegisflux.bpf.host-association.v1"
HOST_ID = "io.aegisflux.bpf.host-id"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
TITLE = "org.opencontainers.image.title"
TIMEOUT = 60


class StepFailed(Exception):
    pass


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def requests_json_bytes(doc: dict) -> bytes:
    """The bytes requests sends for ``json=doc`` (what upload_manifest PUTs)."""
    return json.dumps(doc, allow_nan=False).encode("utf-8")


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise StepFailed(message)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="registry base URL, e.g. http://127.0.0.1:8084")
    args = ap.parse_args()

    base = args.url.rstrip("/")
    parsed = urllib.parse.urlparse(base)
    if parsed.scheme != "http" or not parsed.netloc:
        print(f"FAIL setup: --url must be http://HOST:PORT, got {args.url!r}")
        print("0 passed, 1 failed")
        return 1
    host = parsed.netloc
    client = oras.client.OrasClient(hostname=host, insecure=True)
    http = requests.Session()
    work = tempfile.mkdtemp(prefix="rest-interop-")
    nonce = uuid.uuid4().hex[:10]
    name = f"rest-interop-{nonce}"
    version = "1.0.0"
    host_id = f"interop-node-{nonce}.example.com"
    results: list[tuple[str, str | None]] = []
    state: dict[str, object] = {}

    def step(step_name: str, fn) -> object:
        try:
            out = fn()
            results.append((step_name, None))
            print(f"PASS {step_name}", flush=True)
            return out
        except Exception as e:  # report any failure as this step's reason
            reason = str(e) if isinstance(e, StepFailed) else f"{e.__class__.__name__}: {e}"
            results.append((step_name, reason))
            print(f"FAIL {step_name}: {reason}", flush=True)
            return None

    def needs(*keys: str) -> None:
        missing = [k for k in keys if k not in state]
        expect(not missing, f"skipped: an earlier step did not produce {', '.join(missing)}")

    # --- 1. create through REST --------------------------------------------------
    payload = os.urandom(3000) + b"rest interop " + nonce.encode()

    def rest_create() -> None:
        body = {
            "name": name,
            "version": version,
            "description": "REST interop artifact",
            "type": "program",
            "architecture": "x86_64",
            "kernel_version": "5.4.0",
            "metadata": {"author": "interop@example.com"},
            "tags": ["interop"],
            "data": base64.b64encode(payload).decode("ascii"),
        }
        r = http.post(f"{base}/artifacts", json=body, timeout=TIMEOUT)
        expect(r.status_code == 201, f"POST /artifacts -> {r.status_code}: {r.text[:300]}")
        a = r.json()
        expect(r.headers.get("Location") == f"/artifacts/{a['id']}",
               f"Location {r.headers.get('Location')!r} does not name {a['id']}")
        expect(a["oci"]["repository"] == name and a["oci"]["reference"] == version,
               f"oci block {a['oci']!r}")
        state["id"] = a["id"]
        state["checksum"] = a["checksum"]

    step("rest_create_artifact", rest_create)

    def rest_binary() -> None:
        needs("id")
        r = http.get(f"{base}/artifacts/{state['id']}/binary", timeout=TIMEOUT)
        expect(r.status_code == 200, f"GET binary -> {r.status_code}: {r.text[:300]}")
        expect(r.headers.get("Content-Type") == LAYER_MEDIA_TYPE,
               f"Content-Type {r.headers.get('Content-Type')!r}")
        expect(sha256(r.content) == state["checksum"], "binary does not hash to the artifact checksum")
        state["binary"] = r.content

    step("rest_get_binary", rest_binary)

    # --- 2. pull with oras-py ----------------------------------------------------
    def oras_pull() -> None:
        needs("binary")
        out = os.path.join(work, "pulled")
        files = client.pull(target=f"{host}/{name}:{version}", outdir=out)
        names = sorted(os.path.basename(p) for p in files)
        want = f"{name}-{version}.tar.zst"
        expect(names == [want], f"oras pull wrote {names}, want [{want!r}]")
        with open(files[0], "rb") as f:
            pulled = f.read()
        expect(pulled == state["binary"],
               f"pulled {want} ({len(pulled)} bytes, {sha256(pulled)}) differs from /binary "
               f"({len(state['binary'])} bytes, {state['checksum']})")

    step("oras_pull_equals_rest_binary", oras_pull)

    # --- 3. host association pushed as a referrer with oras-py --------------------
    def oras_push_association() -> None:
        needs("id")
        r = http.get(f"{base}/v2/{name}/manifests/{state['id']}",
                     headers={"Accept": MANIFEST_MEDIA_TYPE}, timeout=TIMEOUT)
        expect(r.status_code == 200, f"GET subject manifest -> {r.status_code}")
        subject_size = len(r.content)
        empty_path = os.path.join(work, "empty.json")
        with open(empty_path, "wb") as f:
            f.write(b"{}")
        empty = {"mediaType": EMPTY_MEDIA_TYPE, "digest": sha256(b"{}"), "size": 2}
        blob_container = client.get_container(f"{host}/{name}:{version}")
        r = client.upload_blob(empty_path, blob_container, dict(empty))
        expect(r.status_code in (200, 201, 202), f"empty blob upload -> {r.status_code}: {r.text[:200]}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": HOST_ASSOCIATION,
            "config": dict(empty),
            "layers": [dict(empty)],
            "subject": {"mediaType": MANIFEST_MEDIA_TYPE, "digest": state["id"], "size": subject_size},
            "annotations": {HOST_ID: host_id},
        }
        digest = sha256(requests_json_bytes(manifest))
        container = client.get_container(f"{host}/{name}@{digest}")
        r = client.upload_manifest(manifest, container)
        expect(r.status_code == 201, f"referrer manifest PUT -> {r.status_code}: {r.text[:300]}")
        expect(r.headers.get("Docker-Content-Digest") == digest,
               f"Docker-Content-Digest {r.headers.get('Docker-Content-Digest')!r}, want {digest}")
        expect(r.headers.get("OCI-Subject") in (None, state["id"]),
               f"OCI-Subject {r.headers.get('OCI-Subject')!r}")
        state["association"] = digest

    step("oras_push_host_association_referrer", oras_push_association)

    def for_host() -> None:
        needs("association")
        r = http.get(f"{base}/artifacts/for-host/{host_id}", timeout=TIMEOUT)
        expect(r.status_code == 200, f"GET for-host -> {r.status_code}: {r.text[:300]}")
        doc = r.json()
        ids = [a.get("id") for a in doc.get("artifacts", [])]
        expect(doc.get("host_id") == host_id, f"host_id {doc.get('host_id')!r}")
        expect(ids == [state["id"]], f"for-host lists {ids}, want [{state['id']}]")
        r = http.get(f"{base}/artifacts/{state['id']}/hosts", timeout=TIMEOUT)
        expect(r.status_code == 200 and r.json().get("hosts") == [host_id],
               f"GET /artifacts/{{id}}/hosts -> {r.status_code}: {r.text[:300]}")

    step("rest_for_host_lists_oras_association", for_host)

    def referrers() -> None:
        needs("association")
        r = http.get(f"{base}/v2/{name}/referrers/{state['id']}", timeout=TIMEOUT)
        expect(r.status_code == 200, f"GET referrers -> {r.status_code}")
        found = [m for m in r.json().get("manifests", []) if m.get("digest") == state["association"]]
        expect(len(found) == 1, f"the association is not among the referrers: {r.text[:300]}")
        expect(found[0].get("artifactType") == HOST_ASSOCIATION, f"artifactType {found[0].get('artifactType')!r}")
        expect((found[0].get("annotations") or {}).get(HOST_ID) == host_id, "host-id annotation missing")

    step("oci_referrers_lists_association", referrers)

    # --- 4. the other way round: pushed with oras-py, read through REST -----------
    def oras_push_artifact() -> None:
        pushed_name = f"{name}-pushed"
        target = f"{host}/{pushed_name}:2.0.0"
        container = client.get_container(target)
        layer_path = os.path.join(work, f"{pushed_name}-2.0.0.tar.zst")
        with open(layer_path, "wb") as f:
            f.write(os.urandom(2048))
        with open(layer_path, "rb") as f:
            layer_bytes = f.read()
        config_bytes = json.dumps({
            "name": pushed_name, "version": "2.0.0", "description": "pushed with oras-py",
            "type": "map", "architecture": "aarch64", "kernel_version": "6.1.0",
            "metadata": {}, "tags": ["oras"], "created_at": "2024-01-01T00:00:00Z",
        }).encode()
        config_path = os.path.join(work, "config.json")
        with open(config_path, "wb") as f:
            f.write(config_bytes)
        layer = oras.oci.NewLayer(layer_path, media_type=LAYER_MEDIA_TYPE)
        layer["annotations"] = {TITLE: os.path.basename(layer_path)}
        config = {"mediaType": BPF_CONFIG, "digest": sha256(config_bytes), "size": len(config_bytes)}
        for path, desc in ((layer_path, layer), (config_path, config)):
            r = client.upload_blob(path, container, desc)
            expect(r.status_code in (200, 201, 202), f"blob upload -> {r.status_code}: {r.text[:200]}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": config,
            "layers": [layer],
        }
        r = client.upload_manifest(manifest, container)
        expect(r.status_code == 201, f"manifest PUT -> {r.status_code}: {r.text[:300]}")
        digest = r.headers.get("Docker-Content-Digest")
        expect(bool(digest), "manifest PUT answer has no Docker-Content-Digest")
        r = http.get(f"{base}/artifacts/{digest}", timeout=TIMEOUT)
        expect(r.status_code == 200, f"GET /artifacts/{digest} -> {r.status_code}: {r.text[:300]}")
        a = r.json()
        for key, want in (("name", pushed_name), ("version", "2.0.0"), ("type", "map"),
                          ("architecture", "aarch64"), ("checksum", sha256(layer_bytes)),
                          ("size", len(layer_bytes))):
            expect(a.get(key) == want, f"{key} {a.get(key)!r}, want {want!r}")
        r = http.get(f"{base}/artifacts/{digest}/binary", timeout=TIMEOUT)
        expect(r.status_code == 200 and r.content == layer_bytes,
               f"/binary -> {r.status_code}, {len(r.content)} bytes, differs from the pushed layer")

    step("oras_pushed_artifact_in_rest", oras_push_artifact)

    passed = sum(1 for _, reason in results if reason is None)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
