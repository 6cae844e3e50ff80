#!/usr/bin/env python3
"""OCI distribution-spec v1.1.1 conformance harness for bpf-registry (or any registry).

Written from the distribution-spec (spec.md, v1.1): every check below is a
self-contained function that pushes its own randomly generated content, talks
plain HTTP to the registry and reports ``PASS name`` or ``FAIL name: reason``.
The last line is ``N passed, N failed``; the exit status is 1 if any check failed.

Usage (run with the venv python from conformance/install-deps.sh):

    python3 conformance/oci_conformance.py --url http://127.0.0.1:5000
        [--repo conformance/test] [--json out.json] [--only SUBSTRING] [--list]

Nothing here measures time: checks only look at statuses, headers and bodies.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import sys
import traceback
import urllib.parse
import uuid
from typing import Callable, Iterable

import requests

# --- media types ---------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ALL_MANIFESTS = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
OCTET = "application/octet-stream"

EMPTY_JSON = b"{}"
ERROR_CODE_RE = re.compile(r"^[A-Z_]+$")
LINK_NEXT_RE = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class CheckFailed(Exception):
    """Raised by a check (or a helper) to fail with a one-line reason."""


# --- small utilities -----------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def rand_bytes(n: int = 256) -> bytes:
    return os.urandom(n)


def rand_suffix() -> str:
    return uuid.uuid4().hex[:10]


def media_type_of(resp: requests.Response) -> str:
    """Content-Type without parameters (the spec says clients ignore them)."""
    return resp.headers.get("Content-Type", "").split(";")[0].strip()


def ensure(cond: bool, reason: str) -> None:
    if not cond:
        raise CheckFailed(reason)


def expect_status(resp: requests.Response, *codes: int, what: str = "") -> None:
    if resp.status_code not in codes:
        label = f"{what}: " if what else ""
        want = "/".join(str(c) for c in codes)
        raise CheckFailed(
            f"{label}{resp.request.method} {short_path(resp.request.url)} -> "
            f"{resp.status_code}, want {want}{body_hint(resp)}"
        )


def expect_header(resp: requests.Response, name: str, what: str = "") -> str:
    value = resp.headers.get(name)
    if value is None:
        label = f"{what}: " if what else ""
        raise CheckFailed(
            f"{label}{resp.request.method} {short_path(resp.request.url)} "
            f"({resp.status_code}) has no {name} header"
        )
    return value


def short_path(url: str | None) -> str:
    if not url:
        return "?"
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (("?" + parts.query) if parts.query else "")
    return path if len(path) <= 90 else path[:87] + "..."


def body_hint(resp: requests.Response) -> str:
    if resp.request.method == "HEAD":
        return ""
    text = (resp.text or "").strip().replace("\n", " ")
    if not text:
        return ""
    return f" (body: {text[:160]})"


def error_codes(resp: requests.Response, what: str = "") -> list[str]:
    """Validate the OCI error envelope and return its codes."""
    label = f"{what}: " if what else ""
    try:
        doc = resp.json()
    except ValueError:
        raise CheckFailed(
            f"{label}{resp.status_code} body is not the JSON error envelope"
            f"{body_hint(resp)}"
        )
    errs = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errs, list) or not errs:
        raise CheckFailed(f"{label}body has no non-empty 'errors' list{body_hint(resp)}")
    codes = []
    for err in errs:
        if not isinstance(err, dict) or not isinstance(err.get("code"), str):
            raise CheckFailed(f"{label}error entry without string 'code': {err!r}")
        if not ERROR_CODE_RE.match(err["code"]):
            raise CheckFailed(f"{label}error code {err['code']!r} is not [A-Z_]+")
        if "message" in err and not isinstance(err["message"], str):
            raise CheckFailed(f"{label}error 'message' is not a string: {err!r}")
        codes.append(err["code"])
    return codes


def expect_error(
    resp: requests.Response, statuses: Iterable[int], codes: Iterable[str], what: str = ""
) -> None:
    """Status must be one of `statuses`, body the OCI envelope with one of `codes`."""
    expect_status(resp, *statuses, what=what)
    got = error_codes(resp, what)
    wanted = set(codes)
    if wanted and not wanted.intersection(got):
        label = f"{what}: " if what else ""
        raise CheckFailed(f"{label}error codes {got}, want one of {sorted(wanted)}")


def parse_range(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"(?:bytes=)?(\d+)-(\d+)", value.strip())
    if not m:
        raise CheckFailed(f"Range header {value!r} is not '<start>-<end>'")
    return int(m.group(1)), int(m.group(2))


def next_link(resp: requests.Response) -> str | None:
    link = resp.headers.get("Link")
    if not link:
        return None
    m = LINK_NEXT_RE.search(link)
    if not m:
        raise CheckFailed(f"Link header {link!r} has no rel=\"next\"")
    return m.group(1)


# --- registry client -----------------------------------------------------------


class Registry:
    """Thin HTTP helper around one registry base URL."""

    def __init__(self, base: str, timeout: float):
        self.base = base.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "bpf-registry-oci-conformance/1"

    # raw request helpers -------------------------------------------------------
    def url(self, path: str) -> str:
        return self.base + path

    def resolve(self, location: str) -> str:
        return urllib.parse.urljoin(self.base + "/", location)

    def request(self, method: str, url_or_path: str, **kw) -> requests.Response:
        url = url_or_path if "://" in url_or_path else self.url(url_or_path)
        kw.setdefault("allow_redirects", False)
        kw.setdefault("timeout", self.timeout)
        return self.session.request(method, url, **kw)

    def raw(self, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None, follow: int = 3) -> tuple[int, str]:
        """Send `path` byte-for-byte (no client-side normalisation) via http.client.

        Redirects are followed up to `follow` hops; returns (final status, final path).
        """
        parts = urllib.parse.urlsplit(self.base)
        for _ in range(follow + 1):
            conn = http.client.HTTPConnection(parts.hostname, parts.port or 80,
                                              timeout=self.timeout)
            try:
                hdrs = dict(headers or {})
                if body is not None:
                    hdrs.setdefault("Content-Length", str(len(body)))
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                resp.read()
                status, location = resp.status, resp.getheader("Location")
            finally:
                conn.close()
            if status in (301, 302, 303, 307, 308) and location:
                loc = urllib.parse.urlsplit(location)
                path = loc.path + (("?" + loc.query) if loc.query else "")
                # same method rewriting as browsers and `requests`
                if (status in (302, 303) and method != "HEAD") or \
                        (status == 301 and method == "POST"):
                    method, body = "GET", None
                continue
            return status, path
        return status, path

    def with_digest(self, location: str, digest: str) -> str:
        url = self.resolve(location)
        sep = "&" if urllib.parse.urlsplit(url).query else "?"
        return f"{url}{sep}digest={urllib.parse.quote(digest, safe='')}"

    # blobs ----------------------------------------------------------------------
    def start_upload(self, repo: str) -> str:
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/",
                         headers={"Content-Length": "0"})
        expect_status(r, 202, what="start upload")
        return self.resolve(expect_header(r, "Location", "start upload"))

    def upload_blob(self, repo: str, data: bytes) -> str:
        """Push a blob with POST then PUT (the most widely supported flow)."""
        digest = sha256(data)
        loc = self.start_upload(repo)
        r = self.request("PUT", self.with_digest(loc, digest), data=data,
                         headers={"Content-Type": OCTET})
        expect_status(r, 201, what=f"setup: upload blob {digest[:19]}")
        return digest

    def blob_exists(self, repo: str, digest: str) -> bool:
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if r.status_code not in (200, 404):
            raise CheckFailed(f"HEAD blob {digest[:19]} -> {r.status_code}, want 200/404")
        return r.status_code == 200

    # manifests -----------------------------------------------------------------
    def put_manifest(self, repo: str, ref: str, body: bytes,
                     media_type: str) -> requests.Response:
        return self.request("PUT", f"/v2/{repo}/manifests/{ref}", data=body,
                            headers={"Content-Type": media_type})

    def push_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        r = self.put_manifest(repo, ref, body, media_type)
        expect_status(r, 201, what=f"setup: push manifest {ref[:19]}")
        return sha256(body)

    def get_manifest(self, repo: str, ref: str, method: str = "GET",
                     accept: str = ALL_MANIFESTS) -> requests.Response:
        return self.request(method, f"/v2/{repo}/manifests/{ref}",
                            headers={"Accept": accept})


def descriptor(media_type: str, data: bytes, **extra) -> dict:
    d = {"mediaType": media_type, "digest": sha256(data), "size": len(data)}
    d.update(extra)
    return d


def dumps(doc: dict) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=False).encode()


class Image:
    """An image (or artifact) manifest whose blobs have been pushed."""

    def __init__(self, body: bytes, media_type: str, blobs: list[bytes]):
        self.body = body
        self.media_type = media_type
        self.digest = sha256(body)
        self.blobs = blobs

    @property
    def desc(self) -> dict:
        return descriptor(self.media_type, self.body)


def build_image(reg: Registry, repo: str, *, nlayers: int = 1,
                artifact_type: str | None = None, subject: dict | None = None,
                annotations: dict | None = None, docker: bool = False,
                empty_config: bool = False, config_media_type: str | None = None,
                platform: tuple[str, str] = ("linux", "amd64"),
                push_blobs: bool = True) -> Image:
    """Create random blobs, push them (unless push_blobs=False), return the manifest."""
    if empty_config:
        config = EMPTY_JSON
        cmt = config_media_type or OCI_EMPTY
    else:
        config = dumps({
            "architecture": platform[1], "os": platform[0],
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"Labels": {"conformance.nonce": rand_suffix()}},
        })
        cmt = config_media_type or (DOCKER_CONFIG if docker else OCI_CONFIG)
    layers = [rand_bytes(300 + 17 * i) for i in range(nlayers)]
    if push_blobs:
        for blob in [config, *layers]:
            reg.upload_blob(repo, blob)
    mt = DOCKER_MANIFEST if docker else OCI_MANIFEST
    lmt = DOCKER_LAYER if docker else OCI_LAYER
    doc: dict = {"schemaVersion": 2, "mediaType": mt}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["config"] = descriptor(cmt, config)
    doc["layers"] = [descriptor(lmt, layer) for layer in layers]
    if subject:
        doc["subject"] = subject
    if annotations:
        doc["annotations"] = annotations
    return Image(dumps(doc), mt, [config, *layers])


# --- check registry --------------------------------------------------------------

CHECKS: list[tuple[str, Callable[["Ctx"], None]]] = []


def check(fn: Callable[["Ctx"], None]) -> Callable[["Ctx"], None]:
    CHECKS.append((fn.__name__, fn))
    return fn


class Ctx:
    def __init__(self, reg: Registry, repo: str):
        self.reg = reg
        self.repo = repo

    def fresh_repo(self, label: str) -> str:
        """A repository name nobody has used yet (for list-style checks)."""
        return f"{self.repo}/{label}-{rand_suffix()}"


# === base =========================================================================


@check
def api_version_check(c: Ctx) -> None:
    r = c.reg.request("GET", "/v2/")
    expect_status(r, 200)
    v = expect_header(r, "Docker-Distribution-API-Version")
    ensure(v.strip() == "registry/2.0", f"Docker-Distribution-API-Version is {v!r}")


# === blob push ===================================================================


@check
def blob_push_monolithic_post(c: Ctx) -> None:
    data = rand_bytes(1000)
    digest = sha256(data)
    r = c.reg.request("POST", f"/v2/{c.repo}/blobs/uploads/",
                      params={"digest": digest}, data=data,
                      headers={"Content-Type": OCTET})
    if r.status_code == 202:
        c.reg.request("DELETE", c.reg.resolve(r.headers.get("Location", "")))
        raise CheckFailed("single POST with ?digest= answered 202 (an upload session): "
                          "single-request monolithic upload not supported, want 201")
    expect_status(r, 201, what="single POST with ?digest=")
    expect_header(r, "Location")
    dcd = expect_header(r, "Docker-Content-Digest")
    ensure(dcd == digest, f"Docker-Content-Digest {dcd}, want {digest}")
    g = c.reg.request("GET", c.reg.resolve(r.headers["Location"]))
    expect_status(g, 200, what="GET Location")
    ensure(g.content == data, "blob at Location differs from pushed bytes")


@check
def blob_push_post_then_put(c: Ctx) -> None:
    data = rand_bytes(1500)
    digest = sha256(data)
    r = c.reg.request("POST", f"/v2/{c.repo}/blobs/uploads/")
    expect_status(r, 202, what="POST")
    loc = expect_header(r, "Location", "POST")
    p = c.reg.request("PUT", c.reg.with_digest(loc, digest), data=data,
                      headers={"Content-Type": OCTET})
    expect_status(p, 201, what="PUT")
    expect_header(p, "Location", "PUT")
    dcd = expect_header(p, "Docker-Content-Digest", "PUT")
    ensure(dcd == digest, f"Docker-Content-Digest {dcd}, want {digest}")
    g = c.reg.request("GET", f"/v2/{c.repo}/blobs/{digest}")
    expect_status(g, 200)
    ensure(g.content == data, "pulled blob differs from pushed bytes")


def _patch(c: Ctx, loc: str, chunk: bytes, start: int) -> requests.Response:
    return c.reg.request("PATCH", loc, data=chunk, headers={
        "Content-Type": OCTET,
        "Content-Range": f"{start}-{start + len(chunk) - 1}",
        "Content-Length": str(len(chunk)),
    })


@check
def blob_push_chunked(c: Ctx) -> None:
    data = rand_bytes(3 * 1024 + 7)
    digest = sha256(data)
    chunks = [data[:1024], data[1024:2048], data[2048:]]
    r = c.reg.request("POST", f"/v2/{c.repo}/blobs/uploads/",
                      headers={"Content-Length": "0"})
    expect_status(r, 202, what="POST")
    loc = c.reg.resolve(expect_header(r, "Location", "POST"))
    offset = 0
    for i, chunk in enumerate(chunks):
        p = _patch(c, loc, chunk, offset)
        expect_status(p, 202, what=f"PATCH chunk {i}")
        offset += len(chunk)
        rng = parse_range(expect_header(p, "Range", f"PATCH chunk {i}"))
        ensure(rng == (0, offset - 1), f"PATCH chunk {i}: Range {rng}, want 0-{offset - 1}")
        loc = c.reg.resolve(expect_header(p, "Location", f"PATCH chunk {i}"))
    s = c.reg.request("GET", loc)
    expect_status(s, 204, what="upload status")
    rng = parse_range(expect_header(s, "Range", "upload status"))
    ensure(rng == (0, len(data) - 1), f"status Range {rng}, want 0-{len(data) - 1}")
    expect_header(s, "Location", "upload status")
    f = c.reg.request("PUT", c.reg.with_digest(loc, digest))
    expect_status(f, 201, what="closing PUT")
    expect_header(f, "Location", "closing PUT")
    g = c.reg.request("GET", f"/v2/{c.repo}/blobs/{digest}")
    expect_status(g, 200)
    ensure(g.content == data, "pulled blob differs from the chunks pushed")


@check
def blob_push_chunked_last_chunk_in_put(c: Ctx) -> None:
    data = rand_bytes(2048)
    digest = sha256(data)
    loc = c.reg.start_upload(c.repo)
    p = _patch(c, loc, data[:1000], 0)
    expect_status(p, 202, what="PATCH")
    loc = c.reg.resolve(expect_header(p, "Location", "PATCH"))
    f = c.reg.request("PUT", c.reg.with_digest(loc, digest), data=data[1000:], headers={
        "Content-Type": OCTET, "Content-Range": f"1000-{len(data) - 1}",
    })
    expect_status(f, 201, what="closing PUT with final chunk")
    g = c.reg.request("GET", f"/v2/{c.repo}/blobs/{digest}")
    expect_status(g, 200)
    ensure(g.content == data, "pulled blob differs from pushed bytes")


@check
def blob_upload_status(c: Ctx) -> None:
    loc = c.reg.start_upload(c.repo)
    p = _patch(c, loc, rand_bytes(100), 0)
    expect_status(p, 202, what="PATCH")
    loc = c.reg.resolve(expect_header(p, "Location", "PATCH"))
    s = c.reg.request("GET", loc)
    expect_status(s, 204)
    expect_header(s, "Location")
    rng = parse_range(expect_header(s, "Range"))
    ensure(rng == (0, 99), f"Range {rng}, want 0-99")
    c.reg.request("DELETE", loc)


@check
def blob_upload_out_of_order_chunk(c: Ctx) -> None:
    loc = c.reg.start_upload(c.repo)
    p = _patch(c, loc, rand_bytes(10), 0)
    expect_status(p, 202, what="first PATCH 0-9")
    loc = c.reg.resolve(expect_header(p, "Location", "first PATCH"))
    bad = _patch(c, loc, rand_bytes(10), 20)
    expect_status(bad, 416, what="PATCH 20-29 after 0-9")
    rng = parse_range(expect_header(bad, "Range", "416 response"))
    ensure(rng == (0, 9), f"416 Range {rng}, want 0-9 (current progress)")
    s = c.reg.request("GET", loc)
    expect_status(s, 204, what="status after 416")
    rng = parse_range(expect_header(s, "Range", "status after 416"))
    ensure(rng == (0, 9), f"status after 416: Range {rng}, want 0-9")
    c.reg.request("DELETE", loc)


@check
def blob_upload_first_chunk_not_at_zero(c: Ctx) -> None:
    loc = c.reg.start_upload(c.repo)
    bad = _patch(c, loc, rand_bytes(10), 5)
    expect_status(bad, 416, what="first PATCH 5-14")
    c.reg.request("DELETE", loc)


@check
def blob_upload_cancel(c: Ctx) -> None:
    loc = c.reg.start_upload(c.repo)
    p = _patch(c, loc, rand_bytes(50), 0)
    expect_status(p, 202, what="PATCH")
    loc = c.reg.resolve(expect_header(p, "Location", "PATCH"))
    d = c.reg.request("DELETE", loc)
    expect_status(d, 204, 202, 200, what="DELETE upload")
    s = c.reg.request("GET", loc)
    expect_error(s, [404], ["BLOB_UPLOAD_UNKNOWN"], "status after cancel")


@check
def blob_upload_wrong_digest(c: Ctx) -> None:
    data = rand_bytes(500)
    claimed = sha256(rand_bytes(500))
    loc = c.reg.start_upload(c.repo)
    r = c.reg.request("PUT", c.reg.with_digest(loc, claimed), data=data,
                      headers={"Content-Type": OCTET})
    expect_error(r, [400], ["DIGEST_INVALID"], "PUT with mismatching digest")
    ensure(not c.reg.blob_exists(c.repo, claimed), "blob present under the claimed digest")
    ensure(not c.reg.blob_exists(c.repo, sha256(data)),
           "rejected content present under its real digest")


@check
def blob_upload_malformed_digest(c: Ctx) -> None:
    loc = c.reg.start_upload(c.repo)
    r = c.reg.request("PUT", c.reg.with_digest(loc, "sha256:not-a-digest"),
                      data=b"x", headers={"Content-Type": OCTET})
    expect_error(r, [400], ["DIGEST_INVALID"], "PUT ?digest=sha256:not-a-digest")


@check
def blob_mount_existing(c: Ctx) -> None:
    src = c.fresh_repo("mount-src")
    data = rand_bytes(700)
    digest = c.reg.upload_blob(src, data)
    dst = f"{c.repo}/mount-dst"
    r = c.reg.request("POST", f"/v2/{dst}/blobs/uploads/",
                      params={"mount": digest, "from": src})
    expect_status(r, 201, what="mount from repo holding the blob")
    expect_header(r, "Location")
    dcd = r.headers.get("Docker-Content-Digest")
    ensure(dcd in (None, digest), f"Docker-Content-Digest {dcd}, want {digest}")
    g = c.reg.request("GET", f"/v2/{dst}/blobs/{digest}")
    expect_status(g, 200, what="GET mounted blob")
    ensure(g.content == data, "mounted blob differs")


@check
def blob_mount_missing_source(c: Ctx) -> None:
    src = c.fresh_repo("mount-src")
    c.reg.upload_blob(src, rand_bytes(10))  # the source repo exists, the blob does not
    missing = sha256(rand_bytes(64))
    r = c.reg.request("POST", f"/v2/{c.repo}/blobs/uploads/",
                      params={"mount": missing, "from": src})
    expect_status(r, 202, what="mount of a blob absent from source")
    loc = c.reg.resolve(expect_header(r, "Location"))
    # the session must be usable for a normal upload
    data = rand_bytes(64)
    p = c.reg.request("PUT", c.reg.with_digest(loc, sha256(data)), data=data,
                      headers={"Content-Type": OCTET})
    expect_status(p, 201, what="PUT into the session opened by the failed mount")


@check
def blob_mount_without_from(c: Ctx) -> None:
    src = c.fresh_repo("mount-src")
    data = rand_bytes(300)
    digest = c.reg.upload_blob(src, data)
    dst = c.fresh_repo("mount-nofrom")
    r = c.reg.request("POST", f"/v2/{dst}/blobs/uploads/", params={"mount": digest})
    expect_status(r, 201, 202, what="mount without from")
    expect_header(r, "Location")
    if r.status_code == 201:
        g = c.reg.request("GET", f"/v2/{dst}/blobs/{digest}")
        expect_status(g, 200, what="GET blob after 201 mount")
        ensure(g.content == data, "mounted blob differs")
    else:
        c.reg.request("DELETE", c.reg.resolve(r.headers["Location"]))


# === blob pull / delete ==========================================================


@check
def blob_head(c: Ctx) -> None:
    data = rand_bytes(1234)
    digest = c.reg.upload_blob(c.repo, data)
    r = c.reg.request("HEAD", f"/v2/{c.repo}/blobs/{digest}")
    expect_status(r, 200)
    cl = expect_header(r, "Content-Length")
    ensure(cl == str(len(data)), f"Content-Length {cl}, want {len(data)}")
    dcd = expect_header(r, "Docker-Content-Digest")
    ensure(dcd == digest, f"Docker-Content-Digest {dcd}, want {digest}")


@check
def blob_get(c: Ctx) -> None:
    data = rand_bytes(4321)
    digest = c.reg.upload_blob(c.repo, data)
    r = c.reg.request("GET", f"/v2/{c.repo}/blobs/{digest}")
    expect_status(r, 200)
    ensure(r.content == data, "body differs from pushed bytes")
    cl = expect_header(r, "Content-Length")
    ensure(cl == str(len(data)), f"Content-Length {cl}, want {len(data)}")
    dcd = expect_header(r, "Docker-Content-Digest")
    ensure(dcd == digest, f"Docker-Content-Digest {dcd}, want {digest}")


@check
def blob_get_range(c: Ctx) -> None:
    data = rand_bytes(1000)
    digest = c.reg.upload_blob(c.repo, data)
    r = c.reg.request("GET", f"/v2/{c.repo}/blobs/{digest}",
                      headers={"Range": "bytes=100-199"})
    expect_status(r, 206)
    cr = expect_header(r, "Content-Range")
    ensure(cr.strip() == f"bytes 100-199/{len(data)}",
           f"Content-Range {cr!r}, want 'bytes 100-199/{len(data)}'")
    ensure(r.content == data[100:200], "partial body differs from bytes 100-199")


@check
def blob_unknown(c: Ctx) -> None:
    digest = sha256(rand_bytes(32))
    h = c.reg.request("HEAD", f"/v2/{c.repo}/blobs/{digest}")
    expect_status(h, 404, what="HEAD unknown blob")
    g = c.reg.request("GET", f"/v2/{c.repo}/blobs/{digest}")
    expect_error(g, [404], ["BLOB_UNKNOWN"], "GET unknown blob")


@check
def blob_delete(c: Ctx) -> None:
    digest = c.reg.upload_blob(c.repo, rand_bytes(222))
    d = c.reg.request("DELETE", f"/v2/{c.repo}/blobs/{digest}")
    expect_status(d, 202, what="DELETE blob")
    h = c.reg.request("HEAD", f"/v2/{c.repo}/blobs/{digest}")
    expect_status(h, 404, what="HEAD after delete")
    g = c.reg.request("GET", f"/v2/{c.repo}/blobs/{digest}")
    expect_error(g, [404], ["BLOB_UNKNOWN"], "GET after delete")


@check
def blob_delete_unknown(c: Ctx) -> None:
    d = c.reg.request("DELETE", f"/v2/{c.repo}/blobs/{sha256(rand_bytes(32))}")
    expect_error(d, [404], ["BLOB_UNKNOWN"], "DELETE unknown blob")


# === manifests ===================================================================


def _check_put_answer(r: requests.Response, body: bytes) -> None:
    expect_status(r, 201)
    expect_header(r, "Location")
    dcd = expect_header(r, "Docker-Content-Digest")
    ensure(dcd == sha256(body), f"Docker-Content-Digest {dcd}, want {sha256(body)}")


def _check_manifest_answer(r: requests.Response, img: Image, method: str) -> None:
    expect_status(r, 200)
    ensure(media_type_of(r) == img.media_type,
           f"Content-Type {media_type_of(r)!r}, want {img.media_type!r}")
    dcd = expect_header(r, "Docker-Content-Digest")
    ensure(dcd == img.digest, f"Docker-Content-Digest {dcd}, want {img.digest}")
    cl = r.headers.get("Content-Length")
    if method == "HEAD":
        ensure(cl == str(len(img.body)), f"Content-Length {cl}, want {len(img.body)}")
    else:
        ensure(r.content == img.body, "body differs from the pushed manifest bytes")


@check
def manifest_put_by_tag(c: Ctx) -> None:
    img = build_image(c.reg, c.repo)
    _check_put_answer(c.reg.put_manifest(c.repo, "tag-" + rand_suffix(), img.body,
                                         img.media_type), img.body)


@check
def manifest_put_by_digest(c: Ctx) -> None:
    img = build_image(c.reg, c.repo)
    _check_put_answer(c.reg.put_manifest(c.repo, img.digest, img.body, img.media_type),
                      img.body)


@check
def manifest_get_by_tag(c: Ctx) -> None:
    img = build_image(c.reg, c.repo)
    tag = "get-" + rand_suffix()
    c.reg.push_manifest(c.repo, tag, img.body, img.media_type)
    _check_manifest_answer(c.reg.get_manifest(c.repo, tag), img, "GET")


@check
def manifest_get_by_digest(c: Ctx) -> None:
    img = build_image(c.reg, c.repo)
    c.reg.push_manifest(c.repo, "dig-" + rand_suffix(), img.body, img.media_type)
    _check_manifest_answer(c.reg.get_manifest(c.repo, img.digest), img, "GET")


@check
def manifest_head_by_tag(c: Ctx) -> None:
    img = build_image(c.reg, c.repo)
    tag = "head-" + rand_suffix()
    c.reg.push_manifest(c.repo, tag, img.body, img.media_type)
    _check_manifest_answer(c.reg.get_manifest(c.repo, tag, "HEAD"), img, "HEAD")


@check
def manifest_head_by_digest(c: Ctx) -> None:
    img = build_image(c.reg, c.repo)
    c.reg.push_manifest(c.repo, img.digest, img.body, img.media_type)
    _check_manifest_answer(c.reg.get_manifest(c.repo, img.digest, "HEAD"), img, "HEAD")


@check
def manifest_exact_bytes_preserved(c: Ctx) -> None:
    config = c.reg.upload_blob(c.repo, dumps({"os": "linux", "architecture": "arm64"}))
    layer = rand_bytes(100)
    c.reg.upload_blob(c.repo, layer)
    size = len(dumps({"os": "linux", "architecture": "arm64"}))
    # odd key order, odd whitespace, trailing newline: must come back byte-identical
    body = ('{"layers":[ {"size":%d,"digest":"%s","mediaType":"%s"} ],\n'
            '   "config":{"digest":"%s","mediaType":"%s","size":%d},'
            '"mediaType":"%s","schemaVersion":2}\n' % (
                len(layer), sha256(layer), OCI_LAYER, config, OCI_CONFIG, size,
                OCI_MANIFEST)).encode()
    tag = "bytes-" + rand_suffix()
    _check_put_answer(c.reg.put_manifest(c.repo, tag, body, OCI_MANIFEST), body)
    r = c.reg.get_manifest(c.repo, tag)
    expect_status(r, 200)
    ensure(r.content == body, "registry rewrote the manifest bytes")


@check
def manifest_tag_overwrite(c: Ctx) -> None:
    a = build_image(c.reg, c.repo)
    b = build_image(c.reg, c.repo)
    tag = "move-" + rand_suffix()
    c.reg.push_manifest(c.repo, tag, a.body, a.media_type)
    c.reg.push_manifest(c.repo, tag, b.body, b.media_type)
    r = c.reg.get_manifest(c.repo, tag)
    expect_status(r, 200)
    ensure(r.content == b.body, "tag still resolves to the first manifest")
    old = c.reg.get_manifest(c.repo, a.digest)
    expect_status(old, 200, what="old manifest by digest after retag")


@check
def manifest_blob_unknown(c: Ctx) -> None:
    img = build_image(c.reg, c.repo, push_blobs=False)
    r = c.reg.put_manifest(c.repo, "missing-" + rand_suffix(), img.body, img.media_type)
    expect_error(r, [400], ["MANIFEST_BLOB_UNKNOWN"], "manifest with unpushed blobs")


@check
def manifest_invalid_json(c: Ctx) -> None:
    r = c.reg.put_manifest(c.repo, "bad-" + rand_suffix(), b'{"schemaVersion": 2, "config":',
                           OCI_MANIFEST)
    expect_error(r, [400], ["MANIFEST_INVALID"], "truncated JSON manifest")


@check
def manifest_unknown_tag(c: Ctx) -> None:
    c.reg.push_manifest(c.repo, "exists-" + rand_suffix(), build_image(c.reg, c.repo).body,
                        OCI_MANIFEST)
    r = c.reg.get_manifest(c.repo, "nope-" + rand_suffix())
    expect_error(r, [404], ["MANIFEST_UNKNOWN"], "GET unknown tag")
    h = c.reg.get_manifest(c.repo, "nope-" + rand_suffix(), "HEAD")
    expect_status(h, 404, what="HEAD unknown tag")


@check
def manifest_unknown_digest(c: Ctx) -> None:
    r = c.reg.get_manifest(c.repo, sha256(rand_bytes(40)))
    expect_error(r, [404], ["MANIFEST_UNKNOWN"], "GET unknown digest")


@check
def manifest_image_index(c: Ctx) -> None:
    amd = build_image(c.reg, c.repo, platform=("linux", "amd64"))
    arm = build_image(c.reg, c.repo, platform=("linux", "arm64"))
    for img in (amd, arm):
        c.reg.push_manifest(c.repo, img.digest, img.body, img.media_type)
    index = {
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            dict(amd.desc, platform={"architecture": "amd64", "os": "linux"}),
            dict(arm.desc, platform={"architecture": "arm64", "os": "linux"}),
        ],
        "annotations": {"org.example.nonce": rand_suffix()},
    }
    body = dumps(index)
    tag = "index-" + rand_suffix()
    _check_put_answer(c.reg.put_manifest(c.repo, tag, body, OCI_INDEX), body)
    _check_manifest_answer(c.reg.get_manifest(c.repo, tag), Image(body, OCI_INDEX, []), "GET")
    child = c.reg.get_manifest(c.repo, arm.digest)
    expect_status(child, 200, what="GET child manifest")
    ensure(child.content == arm.body, "child manifest differs")


@check
def manifest_docker_schema2(c: Ctx) -> None:
    img = build_image(c.reg, c.repo, docker=True)
    tag = "docker-" + rand_suffix()
    _check_put_answer(c.reg.put_manifest(c.repo, tag, img.body, DOCKER_MANIFEST), img.body)
    r = c.reg.get_manifest(c.repo, tag, accept=DOCKER_MANIFEST)
    _check_manifest_answer(r, img, "GET")


@check
def manifest_empty_layers(c: Ctx) -> None:
    c.reg.upload_blob(c.repo, EMPTY_JSON)
    body = dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.nolayers.v1",
        "config": descriptor(OCI_EMPTY, EMPTY_JSON), "layers": [],
        "annotations": {"org.example.nonce": rand_suffix()},
    })
    _check_put_answer(c.reg.put_manifest(c.repo, "nolayers-" + rand_suffix(), body,
                                         OCI_MANIFEST), body)


@check
def manifest_put_digest_mismatch(c: Ctx) -> None:
    img = build_image(c.reg, c.repo)
    wrong = sha256(img.body + b" ")
    r = c.reg.put_manifest(c.repo, wrong, img.body, img.media_type)
    expect_error(r, [400], ["DIGEST_INVALID"], "PUT manifest under a wrong digest")
    expect_status(c.reg.get_manifest(c.repo, wrong, "HEAD"), 404,
                  what="manifest under the wrong digest")


@check
def manifest_delete_by_digest(c: Ctx) -> None:
    img = build_image(c.reg, c.repo)
    tag = "del-" + rand_suffix()
    c.reg.push_manifest(c.repo, tag, img.body, img.media_type)
    d = c.reg.request("DELETE", f"/v2/{c.repo}/manifests/{img.digest}")
    expect_status(d, 202, what="DELETE by digest")
    expect_error(c.reg.get_manifest(c.repo, img.digest), [404], ["MANIFEST_UNKNOWN"],
                 "GET by digest after delete")
    expect_status(c.reg.get_manifest(c.repo, tag), 404, what="GET tag of deleted manifest")


@check
def manifest_delete_by_tag(c: Ctx) -> None:
    img = build_image(c.reg, c.repo)
    tag = "deltag-" + rand_suffix()
    c.reg.push_manifest(c.repo, tag, img.body, img.media_type)
    d = c.reg.request("DELETE", f"/v2/{c.repo}/manifests/{tag}")
    expect_status(d, 202, what="DELETE by tag")
    expect_error(c.reg.get_manifest(c.repo, tag), [404], ["MANIFEST_UNKNOWN"],
                 "GET tag after delete")
    expect_status(c.reg.get_manifest(c.repo, img.digest), 200,
                  what="manifest by digest after its tag was deleted")


@check
def manifest_delete_unknown(c: Ctx) -> None:
    c.reg.upload_blob(c.repo, rand_bytes(8))
    d = c.reg.request("DELETE", f"/v2/{c.repo}/manifests/{sha256(rand_bytes(32))}")
    expect_error(d, [404], ["MANIFEST_UNKNOWN"], "DELETE unknown manifest")


# === subject / referrers ===========================================================

SBOM = "application/vnd.example.sbom.v1"
SIG = "application/vnd.example.signature.v1"


def _referrer(c: Ctx, repo: str, subject: dict, artifact_type: str | None,
              annotations: dict, config_media_type: str | None = None) -> Image:
    c.reg.upload_blob(repo, EMPTY_JSON)
    layer = rand_bytes(120)
    c.reg.upload_blob(repo, layer)
    doc: dict = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["config"] = descriptor(config_media_type or OCI_EMPTY, EMPTY_JSON)
    doc["layers"] = [descriptor("application/vnd.example.data.v1", layer)]
    doc["subject"] = subject
    doc["annotations"] = annotations
    return Image(dumps(doc), OCI_MANIFEST, [EMPTY_JSON, layer])


def _push_referrer(c: Ctx, repo: str, img: Image, subject_digest: str,
                   want_header: bool = False) -> None:
    """Push a manifest carrying `subject`; only some checks insist on OCI-Subject."""
    r = c.reg.put_manifest(repo, img.digest, img.body, img.media_type)
    expect_status(r, 201, what="push referrer")
    if want_header:
        hdr = expect_header(r, "OCI-Subject", "push referrer")
        ensure(hdr == subject_digest, f"OCI-Subject {hdr}, want {subject_digest}")


def _get_referrers(c: Ctx, repo: str, digest: str, artifact_type: str | None = None):
    params = {"artifactType": artifact_type} if artifact_type else None
    r = c.reg.request("GET", f"/v2/{repo}/referrers/{digest}", params=params)
    expect_status(r, 200, what="GET referrers")
    ensure(media_type_of(r) == OCI_INDEX, f"referrers Content-Type {media_type_of(r)!r}")
    try:
        doc = r.json()
    except ValueError:
        raise CheckFailed("referrers body is not JSON")
    ensure(doc.get("schemaVersion") == 2, "referrers index schemaVersion != 2")
    ensure(doc.get("mediaType") == OCI_INDEX, f"referrers mediaType {doc.get('mediaType')!r}")
    ensure(isinstance(doc.get("manifests"), list), "referrers index has no manifests list")
    return r, doc["manifests"]


def _find(descs: list, digest: str) -> dict:
    for d in descs:
        if d.get("digest") == digest:
            return d
    raise CheckFailed(f"referrer {digest[:19]}... missing from referrers list")


@check
def subject_missing_manifest_accepted(c: Ctx) -> None:
    ghost = {"mediaType": OCI_MANIFEST, "digest": sha256(rand_bytes(64)), "size": 1234}
    img = _referrer(c, c.repo, ghost, SBOM, {"org.example.nonce": rand_suffix()})
    _push_referrer(c, c.repo, img, ghost["digest"], want_header=True)
    g = c.reg.get_manifest(c.repo, img.digest)
    expect_status(g, 200, what="GET referrer whose subject is absent")


@check
def referrers_list(c: Ctx) -> None:
    subj = build_image(c.reg, c.repo)
    c.reg.push_manifest(c.repo, subj.digest, subj.body, subj.media_type)
    ann_a = {"org.example.kind": "sbom", "org.example.nonce": rand_suffix()}
    ann_b = {"org.example.kind": "signature", "org.example.nonce": rand_suffix()}
    a = _referrer(c, c.repo, subj.desc, SBOM, ann_a)
    b = _referrer(c, c.repo, subj.desc, SIG, ann_b)
    _push_referrer(c, c.repo, a, subj.digest)
    _push_referrer(c, c.repo, b, subj.digest)
    _, descs = _get_referrers(c, c.repo, subj.digest)
    ensure(len(descs) == 2, f"{len(descs)} referrers, want 2")
    for img, at, ann in ((a, SBOM, ann_a), (b, SIG, ann_b)):
        d = _find(descs, img.digest)
        ensure(d.get("mediaType") == OCI_MANIFEST, f"descriptor mediaType {d.get('mediaType')!r}")
        ensure(d.get("size") == len(img.body), f"descriptor size {d.get('size')}, want {len(img.body)}")
        ensure(d.get("artifactType") == at, f"descriptor artifactType {d.get('artifactType')!r}, want {at!r}")
        ensure(d.get("annotations") == ann, f"descriptor annotations {d.get('annotations')!r}, want {ann!r}")


@check
def referrers_artifact_type_from_config(c: Ctx) -> None:
    subj = build_image(c.reg, c.repo)
    c.reg.push_manifest(c.repo, subj.digest, subj.body, subj.media_type)
    cfg_type = "application/vnd.example.config.v1+json"
    img = _referrer(c, c.repo, subj.desc, None, {"org.example.nonce": rand_suffix()},
                    config_media_type=cfg_type)
    _push_referrer(c, c.repo, img, subj.digest)
    _, descs = _get_referrers(c, c.repo, subj.digest)
    d = _find(descs, img.digest)
    ensure(d.get("artifactType") == cfg_type,
           f"artifactType {d.get('artifactType')!r}, want config mediaType {cfg_type!r}")


@check
def referrers_filter_artifact_type(c: Ctx) -> None:
    subj = build_image(c.reg, c.repo)
    c.reg.push_manifest(c.repo, subj.digest, subj.body, subj.media_type)
    a = _referrer(c, c.repo, subj.desc, SBOM, {"org.example.nonce": rand_suffix()})
    b = _referrer(c, c.repo, subj.desc, SIG, {"org.example.nonce": rand_suffix()})
    _push_referrer(c, c.repo, a, subj.digest)
    _push_referrer(c, c.repo, b, subj.digest)
    r, descs = _get_referrers(c, c.repo, subj.digest, SBOM)
    applied = expect_header(r, "OCI-Filters-Applied", "filtered referrers")
    ensure("artifactType" in [x.strip() for x in applied.split(",")],
           f"OCI-Filters-Applied {applied!r}")
    ensure([d.get("digest") for d in descs] == [a.digest],
           f"filtered list {[d.get('digest', '?')[:19] for d in descs]}, want only the SBOM")


@check
def referrers_empty(c: Ctx) -> None:
    subj = build_image(c.reg, c.repo)
    c.reg.push_manifest(c.repo, subj.digest, subj.body, subj.media_type)
    _, descs = _get_referrers(c, c.repo, subj.digest)
    ensure(descs == [], f"{len(descs)} referrers for a manifest nobody refers to")
    _, descs = _get_referrers(c, c.repo, sha256(rand_bytes(64)))
    ensure(descs == [], "referrers of an unknown digest are not an empty list")


@check
def referrers_invalid_digest(c: Ctx) -> None:
    c.reg.upload_blob(c.repo, rand_bytes(8))
    r = c.reg.request("GET", f"/v2/{c.repo}/referrers/sha256:abc")
    expect_status(r, 400, what="referrers of a malformed digest")


@check
def referrers_deleted_referrer_removed(c: Ctx) -> None:
    subj = build_image(c.reg, c.repo)
    c.reg.push_manifest(c.repo, subj.digest, subj.body, subj.media_type)
    img = _referrer(c, c.repo, subj.desc, SBOM, {"org.example.nonce": rand_suffix()})
    _push_referrer(c, c.repo, img, subj.digest)
    _, descs = _get_referrers(c, c.repo, subj.digest)
    _find(descs, img.digest)
    d = c.reg.request("DELETE", f"/v2/{c.repo}/manifests/{img.digest}")
    expect_status(d, 202, what="DELETE referrer")
    _, descs = _get_referrers(c, c.repo, subj.digest)
    ensure(all(x.get("digest") != img.digest for x in descs),
           "deleted referrer still listed")


@check
def referrers_index_referrer(c: Ctx) -> None:
    subj = build_image(c.reg, c.repo)
    c.reg.push_manifest(c.repo, subj.digest, subj.body, subj.media_type)
    child = build_image(c.reg, c.repo)
    c.reg.push_manifest(c.repo, child.digest, child.body, child.media_type)
    ann = {"org.example.nonce": rand_suffix()}
    body = dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.example.bundle.v1",
        "manifests": [child.desc], "subject": subj.desc, "annotations": ann,
    })
    r = c.reg.put_manifest(c.repo, sha256(body), body, OCI_INDEX)
    expect_status(r, 201, what="push index with subject")
    hdr = expect_header(r, "OCI-Subject", "push index with subject")
    ensure(hdr == subj.digest, f"OCI-Subject {hdr}, want {subj.digest}")
    _, descs = _get_referrers(c, c.repo, subj.digest)
    d = _find(descs, sha256(body))
    ensure(d.get("mediaType") == OCI_INDEX, f"descriptor mediaType {d.get('mediaType')!r}")
    ensure(d.get("artifactType") == "application/vnd.example.bundle.v1",
           f"descriptor artifactType {d.get('artifactType')!r}")
    ensure(d.get("annotations") == ann, f"descriptor annotations {d.get('annotations')!r}")


# === tags / catalog ==============================================================

TAGS = ["gamma", "alpha", "1.0", "delta", "beta", "v2_rc-1"]


def _tagged_repo(c: Ctx) -> tuple[str, list[str]]:
    repo = c.fresh_repo("tags")
    img = build_image(c.reg, repo)
    for t in TAGS:
        c.reg.push_manifest(repo, t, img.body, img.media_type)
    return repo, sorted(TAGS)


@check
def tags_list(c: Ctx) -> None:
    repo, want = _tagged_repo(c)
    r = c.reg.request("GET", f"/v2/{repo}/tags/list")
    expect_status(r, 200)
    doc = r.json()
    ensure(doc.get("name") == repo, f"name {doc.get('name')!r}, want {repo!r}")
    ensure(doc.get("tags") == want, f"tags {doc.get('tags')}, want {want} (lexical order)")


@check
def tags_list_pagination(c: Ctx) -> None:
    repo, want = _tagged_repo(c)
    r = c.reg.request("GET", f"/v2/{repo}/tags/list", params={"n": 2})
    expect_status(r, 200, what="?n=2")
    first = r.json().get("tags")
    ensure(first == want[:2], f"?n=2 gave {first}, want {want[:2]}")
    link = next_link(r)
    ensure(link is not None, "?n=2 with more tags left: no Link rel=\"next\" header")
    got, pages = list(first), 1
    while link and pages < 10:
        r = c.reg.request("GET", c.reg.resolve(link))
        expect_status(r, 200, what="following Link")
        got += r.json().get("tags") or []
        link, pages = next_link(r), pages + 1
    ensure(got == want, f"following Link gave {got}, want {want}")
    r = c.reg.request("GET", f"/v2/{repo}/tags/list", params={"n": 2, "last": want[1]})
    expect_status(r, 200, what="?n=2&last=")
    page = r.json().get("tags")
    ensure(page == want[2:4], f"?n=2&last={want[1]} gave {page}, want {want[2:4]}")
    r = c.reg.request("GET", f"/v2/{repo}/tags/list", params={"last": want[3]})
    expect_status(r, 200, what="?last= alone")
    page = r.json().get("tags")
    ensure(page == want[4:], f"?last={want[3]} gave {page}, want {want[4:]}")


@check
def tags_list_n_zero(c: Ctx) -> None:
    repo, _ = _tagged_repo(c)
    r = c.reg.request("GET", f"/v2/{repo}/tags/list", params={"n": 0})
    expect_status(r, 200)
    ensure(not (r.json().get("tags") or []), f"?n=0 returned {r.json().get('tags')}")
    ensure("Link" not in r.headers, "?n=0 carries a Link header")


@check
def tags_list_unknown_repo(c: Ctx) -> None:
    r = c.reg.request("GET", f"/v2/{c.fresh_repo('ghost')}/tags/list")
    expect_error(r, [404], ["NAME_UNKNOWN"], "tags of an unknown repository")


@check
def catalog(c: Ctx) -> None:
    stem = c.fresh_repo("catalog")
    repos = [f"{stem}/a", f"{stem}/b"]
    for repo in repos:
        c.reg.upload_blob(repo, rand_bytes(16))
        img = build_image(c.reg, repo)
        c.reg.push_manifest(repo, "latest", img.body, img.media_type)
    # walk the whole catalog with small pages, following Link
    seen: list[str] = []
    url: str | None = c.reg.url("/v2/_catalog?n=50")
    pages = 0
    while url and pages < 1000:
        r = c.reg.request("GET", url)
        expect_status(r, 200, what="GET /v2/_catalog")
        page = r.json().get("repositories")
        ensure(isinstance(page, list), "catalog has no 'repositories' list")
        seen += page
        link = next_link(r)
        url = c.reg.resolve(link) if link else None
        pages += 1
    for repo in repos:
        ensure(repo in seen, f"{repo} missing from /v2/_catalog")
    ensure(seen == sorted(seen), "catalog is not in lexical order")
    r = c.reg.request("GET", "/v2/_catalog", params={"n": 1})
    expect_status(r, 200, what="?n=1")
    ensure(len(r.json().get("repositories") or []) == 1, "?n=1 did not return one repository")
    ensure(next_link(r) is not None, "?n=1 with more repositories: no Link rel=\"next\"")
    r = c.reg.request("GET", "/v2/_catalog", params={"n": 1, "last": repos[0]})
    expect_status(r, 200, what="?n=1&last=")
    ensure(r.json().get("repositories") == [repos[1]],
           f"?n=1&last={repos[0]} gave {r.json().get('repositories')}, want [{repos[1]}]")


# === errors ======================================================================


@check
def error_name_invalid_uppercase(c: Ctx) -> None:
    bad = "Conformance/UPPER"
    for method, path in (("GET", f"/v2/{bad}/manifests/latest"),
                         ("GET", f"/v2/{bad}/tags/list"),
                         ("POST", f"/v2/{bad}/blobs/uploads/")):
        r = c.reg.request(method, path)
        expect_error(r, [400, 404], ["NAME_INVALID", "NAME_UNKNOWN"], f"{method} {path}")


@check
def error_name_too_long(c: Ctx) -> None:
    bad = "/".join(["a" * 60] * 5)  # 304 characters
    r = c.reg.request("GET", f"/v2/{bad}/manifests/latest")
    expect_error(r, [400, 404], ["NAME_INVALID", "NAME_UNKNOWN"], "256+ character name")


@check
def error_digest_malformed_blob(c: Ctx) -> None:
    c.reg.upload_blob(c.repo, rand_bytes(8))
    for ref in ("sha256:abc", "sha256:" + "z" * 64, "notadigest:1234"):
        r = c.reg.request("GET", f"/v2/{c.repo}/blobs/{ref}")
        expect_error(r, [400], ["DIGEST_INVALID"], f"GET blobs/{ref[:20]}")


@check
def error_digest_malformed_manifest(c: Ctx) -> None:
    c.reg.upload_blob(c.repo, rand_bytes(8))
    r = c.reg.request("GET", f"/v2/{c.repo}/manifests/sha256:abc",
                      headers={"Accept": ALL_MANIFESTS})
    expect_error(r, [400], ["DIGEST_INVALID"], "GET manifests/sha256:abc")


@check
def error_unknown_repository(c: Ctx) -> None:
    repo = c.fresh_repo("ghost")
    r = c.reg.get_manifest(repo, "latest")
    expect_error(r, [404], ["NAME_UNKNOWN", "MANIFEST_UNKNOWN"], "manifest of unknown repo")
    r = c.reg.request("GET", f"/v2/{repo}/blobs/{sha256(b'x')}")
    expect_error(r, [404], ["NAME_UNKNOWN", "BLOB_UNKNOWN"], "blob of unknown repo")


@check
def error_upload_unknown(c: Ctx) -> None:
    c.reg.upload_blob(c.repo, rand_bytes(8))
    for upload_id in ("not-a-real-upload", str(uuid.uuid4())):
        path = f"/v2/{c.repo}/blobs/uploads/{upload_id}"
        expect_error(c.reg.request("GET", path), [404], ["BLOB_UPLOAD_UNKNOWN"],
                     f"GET uploads/{upload_id[:18]}")
        p = c.reg.request("PATCH", path, data=b"abc", headers={
            "Content-Type": OCTET, "Content-Range": "0-2"})
        expect_error(p, [404], ["BLOB_UPLOAD_UNKNOWN"], f"PATCH uploads/{upload_id[:18]}")
        u = c.reg.request("PUT", f"{path}?digest={sha256(b'abc')}", data=b"abc",
                          headers={"Content-Type": OCTET})
        expect_error(u, [404], ["BLOB_UPLOAD_UNKNOWN"], f"PUT uploads/{upload_id[:18]}")


@check
def error_upload_foreign_repo(c: Ctx) -> None:
    loc = c.reg.start_upload(c.repo)
    upload_id = urllib.parse.urlsplit(loc).path.rstrip("/").rsplit("/", 1)[-1]
    other = c.fresh_repo("other")
    c.reg.upload_blob(other, rand_bytes(8))
    r = c.reg.request("GET", f"/v2/{other}/blobs/uploads/{upload_id}")
    expect_error(r, [404], ["BLOB_UPLOAD_UNKNOWN"], "upload id used under another repo")
    c.reg.request("DELETE", loc)


# === spec details and strict queries =============================================


@check
def manifest_invalid_reference_is_unknown(c: Ctx) -> None:
    """The official suite's nonexistent reference: 404, not 400 (a PUT stays 400)."""
    ref = ".INVALID_MANIFEST_NAME"
    r = c.reg.get_manifest(c.repo, ref)
    expect_error(r, [404], ["MANIFEST_UNKNOWN"], f"GET manifests/{ref}")
    h = c.reg.get_manifest(c.repo, ref, "HEAD")
    expect_status(h, 404, what=f"HEAD manifests/{ref}")
    d = c.reg.request("DELETE", f"/v2/{c.repo}/manifests/{ref}")
    expect_error(d, [404], ["MANIFEST_UNKNOWN"], f"DELETE manifests/{ref}")
    img = build_image(c.reg, c.repo)
    p = c.reg.put_manifest(c.repo, ref, img.body, img.media_type)
    expect_error(p, [400], ["MANIFEST_INVALID", "TAG_INVALID"], f"PUT manifests/{ref}")


@check
def blob_mount_without_from_discovers_blob(c: Ctx) -> None:
    """Automatic content discovery: a mount without `from` finds the blob (201)."""
    src = c.fresh_repo("mount-src")
    data = rand_bytes(333)
    digest = c.reg.upload_blob(src, data)
    dst = c.fresh_repo("mount-auto")
    r = c.reg.request("POST", f"/v2/{dst}/blobs/uploads/", params={"mount": digest})
    expect_status(r, 201, what="mount without from of a stored blob")
    loc = expect_header(r, "Location")
    ensure(urllib.parse.urlsplit(c.reg.resolve(loc)).path == f"/v2/{dst}/blobs/{digest}",
           f"Location {loc!r} is not the mounted blob")
    g = c.reg.request("GET", f"/v2/{dst}/blobs/{digest}")
    expect_status(g, 200, what="GET blob after automatic mount")
    ensure(g.content == data, "mounted blob differs")
    # A digest stored nowhere: an upload session, as for any failed mount.
    r = c.reg.request("POST", f"/v2/{dst}/blobs/uploads/",
                      params={"mount": sha256(rand_bytes(64))})
    expect_status(r, 202, what="mount without from of an unknown blob")
    c.reg.request("DELETE", c.reg.resolve(expect_header(r, "Location")))


@check
def manifest_accept_q_zero_excludes(c: Ctx) -> None:
    """RFC 9110 §12.5.1: a media range with q=0 is not acceptable."""
    img = build_image(c.reg, c.repo)
    tag = "q0-" + rand_suffix()
    c.reg.push_manifest(c.repo, tag, img.body, img.media_type)
    for accept in (f"{OCI_MANIFEST};q=0", f"{OCI_MANIFEST};q=0, */*",
                   f"{OCI_INDEX}, {OCI_MANIFEST}; q=0.0"):
        r = c.reg.get_manifest(c.repo, tag, accept=accept)
        expect_status(r, 404, 406, what=f"Accept: {accept}")
    r = c.reg.get_manifest(c.repo, tag, accept=f"{OCI_INDEX};q=0, {OCI_MANIFEST}")
    expect_status(r, 200, what="q=0 on another type only")
    ensure(r.content == img.body, "manifest bytes differ")


@check
def blob_get_invalid_range_ignored(c: Ctx) -> None:
    """RFC 9110 §14.2: an invalid range (last < first) is ignored: 200, whole blob."""
    data = rand_bytes(400)
    digest = c.reg.upload_blob(c.repo, data)
    r = c.reg.request("GET", f"/v2/{c.repo}/blobs/{digest}", headers={"Range": "bytes=5-3"})
    expect_status(r, 200, what="Range: bytes=5-3")
    ensure("Content-Range" not in r.headers, "ignored range answered with Content-Range")
    ensure(r.content == data, "body is not the whole blob")


@check
def query_repeated_parameters_rejected(c: Ctx) -> None:
    """A parameter given twice is a 400 and changes nothing (never first-here, last-there)."""
    data = rand_bytes(99)
    right, wrong = sha256(data), sha256(rand_bytes(99))
    repo = c.fresh_repo("dupq")
    held = c.reg.upload_blob(c.fresh_repo("dupq-src"), rand_bytes(50))
    r = c.reg.request("POST", f"/v2/{repo}/blobs/uploads/",
                      params=[("digest", wrong), ("digest", right)], data=data,
                      headers={"Content-Type": OCTET})
    expect_error(r, [400], ["DIGEST_INVALID"], "POST ?digest=&digest=")
    ensure(not c.reg.blob_exists(repo, right), "blob stored despite repeated digest")
    r = c.reg.request("POST", f"/v2/{repo}/blobs/uploads/",
                      params=[("mount", held), ("from", repo), ("from", repo + "x")])
    expect_error(r, [400], ["NAME_INVALID"], "POST ?mount=&from=&from=")
    ensure(not c.reg.blob_exists(repo, held), "blob mounted despite repeated from")
    loc = c.reg.start_upload(repo)
    url = c.reg.resolve(loc)
    sep = "&" if urllib.parse.urlsplit(url).query else "?"
    r = c.reg.request("PUT", f"{url}{sep}digest={wrong}&digest={right}", data=data,
                      headers={"Content-Type": OCTET})
    expect_error(r, [400], ["DIGEST_INVALID"], "PUT ?digest=&digest=")
    ensure(not c.reg.blob_exists(repo, right), "blob stored despite repeated digest")
    c.reg.request("DELETE", url)
    for path in (f"/v2/{c.repo}/tags/list", "/v2/_catalog"):
        r = c.reg.request("GET", path, params=[("n", "1"), ("n", "2")])
        expect_error(r, [400], ["PAGINATION_NUMBER_INVALID"], f"GET {path}?n=&n=")
        r = c.reg.request("GET", path, params=[("last", "a"), ("last", "b")])
        expect_status(r, 400, what=f"GET {path}?last=&last=")
        error_codes(r, f"GET {path}?last=&last=")


# === path tricks =================================================================


@check
def path_traversal(c: Ctx) -> None:
    digest = sha256(rand_bytes(8))
    repo = c.repo
    probes = [
        ("GET", f"/v2/{repo}/../../../etc/passwd"),
        ("GET", f"/v2/../../etc/passwd/manifests/latest"),
        ("GET", f"/v2/{repo}/manifests/.."),
        ("GET", f"/v2/{repo}/manifests/..%2f..%2f..%2fetc%2fpasswd"),
        ("GET", f"/v2/%2e%2e/%2e%2e/etc/blobs/{digest}"),
        ("GET", f"/v2/{repo}/%2e%2e/%2e%2e/blobs/{digest}"),
        ("GET", f"/v2/{repo}/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd"),
        ("GET", f"/v2/{repo}/blobs/uploads/..%2f..%2f..%2fetc%2fpasswd"),
        ("GET", f"/v2/{repo}/blobs/uploads/%2e%2e"),
        ("GET", f"/v2/{repo}%00/manifests/latest"),
        ("GET", f"/v2/{repo}/manifests/latest%00"),
        ("GET", f"/v2/{repo}/blobs/{digest}%00"),
        ("GET", f"/v2/{repo}/tags/list%00"),
        ("POST", f"/v2/%2e%2e/%2e%2e/blobs/uploads/"),
        ("POST", f"/v2/{repo}/..%2f..%2fescape/blobs/uploads/"),
        ("PUT", f"/v2/{repo}/manifests/..%2f..%2fescape"),
        ("PUT", f"/v2/{repo}/manifests/%2e%2e"),
        ("DELETE", f"/v2/{repo}/manifests/..%2fx"),
        ("DELETE", f"/v2/{repo}/blobs/sha256:%2e%2e%2f%2e%2e"),
    ]
    img_body = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": descriptor(OCI_EMPTY, EMPTY_JSON), "layers": []})
    bad = []
    for method, path in probes:
        body = img_body if method == "PUT" else (b"" if method == "POST" else None)
        hdrs = {"Content-Type": OCI_MANIFEST} if method == "PUT" else {}
        try:
            status, final = c.reg.raw(method, path, body=body, headers=hdrs)
        except (OSError, http.client.HTTPException) as e:
            bad.append(f"{method} {path} -> connection error {e.__class__.__name__}")
            continue
        if not 400 <= status < 500:
            via = f" (after redirect to {final})" if final != path else ""
            bad.append(f"{method} {path} -> {status}{via}")
    ensure(not bad, "; ".join(bad))


# --- runner ----------------------------------------------------------------------


def run(reg: Registry, repo: str, only: str | None) -> list[dict]:
    results = []
    ctx = Ctx(reg, repo)
    for name, fn in CHECKS:
        if only and only not in name:
            continue
        try:
            fn(ctx)
            results.append({"name": name, "passed": True, "reason": ""})
            print(f"PASS {name}", flush=True)
        except CheckFailed as e:
            results.append({"name": name, "passed": False, "reason": str(e)})
            print(f"FAIL {name}: {e}", flush=True)
        except requests.RequestException as e:
            reason = f"HTTP error: {e.__class__.__name__}: {e}"
            results.append({"name": name, "passed": False, "reason": reason})
            print(f"FAIL {name}: {reason}", flush=True)
        except Exception as e:  # a bug in the check or an unparseable answer
            tb = traceback.extract_tb(e.__traceback__)[-1]
            reason = f"{e.__class__.__name__}: {e} (line {tb.lineno})"
            results.append({"name": name, "passed": False, "reason": reason})
            print(f"FAIL {name}: {reason}", flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="registry base URL, e.g. http://127.0.0.1:5000")
    ap.add_argument("--repo", default="conformance/test", help="repository namespace to use")
    ap.add_argument("--json", dest="json_out", help="write results as JSON to this file")
    ap.add_argument("--only", help="run only checks whose name contains this string")
    ap.add_argument("--list", action="store_true", help="list check names and exit")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="per-request network timeout in seconds (not a check threshold)")
    args = ap.parse_args()
    if args.list:
        for name, _ in CHECKS:
            print(name)
        return 0
    if not args.url:
        ap.error("--url is required")
    reg = Registry(args.url, args.timeout)
    results = run(reg, args.repo, args.only)
    passed = sum(1 for r in results if r["passed"])
    failed = len(results) - passed
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"url": args.url, "repo": args.repo, "passed": passed,
                       "failed": failed, "checks": results}, f, indent=2)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
