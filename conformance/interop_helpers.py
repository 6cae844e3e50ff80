#!/usr/bin/env python3
"""HTTP-level helpers for conformance/interop.sh (push test images, check referrers).

Subcommands (run with the venv python; reuse the client in oci_conformance.py):

  push-image --url URL --repo REPO
      Builds a real little image by hand: gzipped tar layers, an OCI config
      (application/vnd.oci.image.config.v1+json) with matching diff_ids, an OCI
      image manifest tagged ``single``, and an OCI image index tagged ``multi``
      with linux/amd64 and linux/arm64 manifests. Prints JSON
      ``{"single": DIGEST, "multi": DIGEST}`` on stdout.

  referrers --url URL --repo REPO --subject DIGEST
      Attaches an SBOM referrer (artifactType application/vnd.example.sbom.v1,
      ``subject`` = DIGEST), checks the PUT answer's OCI-Subject header, that
      GET /v2/REPO/referrers/DIGEST lists it, that ?artifactType= keeps it
      (with OCI-Filters-Applied) and that a filter on another type drops it.
      Prints PASS/FAIL lines, exits 1 on failure.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import sys
import tarfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from oci_conformance import (  # noqa: E402
    ALL_MANIFESTS, EMPTY_JSON, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER_GZIP,
    OCI_MANIFEST, CheckFailed, Registry, descriptor, dumps, expect_header,
    expect_status, media_type_of, sha256,
)

SBOM = "application/vnd.example.sbom.v1"


def make_layer(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """Return (uncompressed tar, gzipped tar) holding `files`."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return tar_bytes, gzip.compress(tar_bytes, mtime=0)


def push_platform_image(reg: Registry, repo: str, os_name: str, arch: str) -> bytes:
    nonce = uuid.uuid4().hex
    tar_bytes, gz = make_layer({
        "bin/hello": f"#!/bin/sh\necho hello from {os_name}/{arch} {nonce}\n".encode(),
        "etc/os-release": f'NAME="interop"\nID=interop\nARCH={arch}\n'.encode(),
    })
    config = dumps({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch, "os": os_name,
        "config": {"Entrypoint": ["/bin/hello"], "Labels": {"interop.nonce": nonce}},
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar_bytes)]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "interop_helpers.py"}],
    })
    reg.upload_blob(repo, gz)
    reg.upload_blob(repo, config)
    return dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER_GZIP, gz)],
        "annotations": {"org.opencontainers.image.title": f"interop-{arch}"},
    })


def cmd_push_image(args: argparse.Namespace) -> int:
    reg = Registry(args.url, 30)
    single = push_platform_image(reg, args.repo, "linux", "amd64")
    reg.push_manifest(args.repo, "single", single, OCI_MANIFEST)
    entries = []
    for arch in ("amd64", "arm64"):
        body = push_platform_image(reg, args.repo, "linux", arch)
        reg.push_manifest(args.repo, sha256(body), body, OCI_MANIFEST)
        entries.append(dict(descriptor(OCI_MANIFEST, body),
                            platform={"architecture": arch, "os": "linux"}))
    index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    reg.push_manifest(args.repo, "multi", index, OCI_INDEX)
    print(json.dumps({"single": sha256(single), "multi": sha256(index)}))
    return 0


def cmd_referrers(args: argparse.Namespace) -> int:
    reg = Registry(args.url, 30)
    failed = 0

    def step(name: str, fn) -> None:
        nonlocal failed
        try:
            fn()
            print(f"PASS {name}", flush=True)
        except Exception as e:  # report any failure as this step's reason
            failed += 1
            print(f"FAIL {name}: {e}", flush=True)

    state: dict = {}

    def attach() -> None:
        r = reg.get_manifest(args.repo, args.subject, accept=ALL_MANIFESTS)
        expect_status(r, 200, what="GET subject manifest")
        subject = descriptor(media_type_of(r), r.content)
        if subject["digest"] != args.subject:
            raise CheckFailed("subject manifest bytes do not hash to its digest")
        sbom = dumps({"spdxVersion": "SPDX-2.3", "name": "xdp_drop",
                      "nonce": uuid.uuid4().hex})
        reg.upload_blob(args.repo, EMPTY_JSON)
        reg.upload_blob(args.repo, sbom)
        ann = {"org.example.sbom.format": "spdx+json",
               "org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
        body = dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SBOM,
            "config": descriptor(OCI_EMPTY, EMPTY_JSON),
            "layers": [descriptor("application/spdx+json", sbom)],
            "subject": subject, "annotations": ann,
        })
        r = reg.put_manifest(args.repo, sha256(body), body, OCI_MANIFEST)
        expect_status(r, 201, what="PUT referrer")
        state.update(digest=sha256(body), annotations=ann, put=r)

    def subject_header() -> None:
        if "put" not in state:
            raise CheckFailed("no referrer was attached")
        hdr = expect_header(state["put"], "OCI-Subject", "PUT referrer")
        if hdr != args.subject:
            raise CheckFailed(f"OCI-Subject {hdr}, want {args.subject}")

    def listed(artifact_type: str | None, want: bool) -> None:
        if "digest" not in state:
            raise CheckFailed("no referrer was attached")
        params = {"artifactType": artifact_type} if artifact_type else None
        r = reg.request("GET", f"/v2/{args.repo}/referrers/{args.subject}", params=params)
        expect_status(r, 200, what="GET referrers")
        if media_type_of(r) != OCI_INDEX:
            raise CheckFailed(f"Content-Type {media_type_of(r)!r}, want {OCI_INDEX}")
        if artifact_type:
            applied = expect_header(r, "OCI-Filters-Applied", "filtered referrers")
            if "artifactType" not in applied:
                raise CheckFailed(f"OCI-Filters-Applied {applied!r}")
        descs = r.json().get("manifests") or []
        hit = [d for d in descs if d.get("digest") == state["digest"]]
        if not want:
            if hit:
                raise CheckFailed(f"filter {artifact_type} still lists the SBOM referrer")
            return
        if not hit:
            raise CheckFailed(f"referrer missing from {len(descs)} descriptor(s)")
        d = hit[0]
        if d.get("artifactType") != SBOM:
            raise CheckFailed(f"artifactType {d.get('artifactType')!r}, want {SBOM}")
        if d.get("annotations") != state["annotations"]:
            raise CheckFailed(f"annotations {d.get('annotations')!r}")

    step("referrers_attach_sbom", attach)
    step("referrers_oci_subject_header", subject_header)
    step("referrers_list_shows_sbom", lambda: listed(None, True))
    step("referrers_filter_keeps_sbom", lambda: listed(SBOM, True))
    step("referrers_filter_drops_other_type",
         lambda: listed("application/vnd.example.other.v1", False))
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("push-image")
    p.add_argument("--url", required=True)
    p.add_argument("--repo", required=True)
    p = sub.add_parser("referrers")
    p.add_argument("--url", required=True)
    p.add_argument("--repo", required=True)
    p.add_argument("--subject", required=True)
    args = ap.parse_args()
    try:
        return {"push-image": cmd_push_image, "referrers": cmd_referrers}[args.cmd](args)
    except CheckFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
