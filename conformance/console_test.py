#!/usr/bin/env python3
"""console_test.py - the web console in a real headless Chromium.

Usage: console_test.py --binary target/release/bpf-registry \
           --chromium /usr/bin/chromium --screenshots target/console-screenshots

Drives Debian's Chromium with Playwright (executable_path: no browser
download) against the release binary, each server on a free 127.0.0.1
port over a fresh data directory:

  1. authentication off: pushes artifacts through the REST API (an eBPF
     object compiled with clang, a second platform, a map, a host
     association), then in the browser: the index lists them; the type
     filter (a select that submits on change, through the console's
     script) and the search narrow the list; the artifact page shows the
     eBPF facts (program sections and types, maps, license, BTF), the
     host and the pull commands, and its Copy button selects the command;
     the host and repository pages show the artifact;
  2. authentication on (htpasswd -B user): without credentials the console
     answers 401 with a Basic challenge (what makes a browser ask); with
     Playwright's http_credentials the same page loads, signed in.

Every page of the signed-in and open runs is checked for console errors
and uncaught exceptions (a CSP violation is a console error, so an inline
script or style would fail here). Screenshots go to --screenshots.
Prints PASS/FAIL per check, then "N passed, N failed"; exits 1 on failure.
"""

import argparse
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import requests
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

# How long a server may take to start (a liveness bound, not a measurement).
START_SECS = 30

BPF_SOURCE = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 128);
    __type(key, __u32);
    __type(value, __u64);
} pkt_count SEC(".maps");

SEC("xdp")
int xdp_pass_all(struct xdp_md *ctx)
{
    __u32 key = ctx->ingress_ifindex;
    __u64 one = 1, *val = bpf_map_lookup_elem(&pkt_count, &key);
    if (val)
        __sync_fetch_and_add(val, 1);
    else
        bpf_map_update_elem(&pkt_count, &key, &one, BPF_ANY);
    return XDP_PASS;
}

SEC("kprobe/do_unlinkat")
int trace_unlink(void *ctx)
{
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

PASSED = 0
FAILED = 0


def check(name, ok, detail=""):
    global PASSED, FAILED
    if ok:
        PASSED += 1
        print(f"PASS {name}")
    else:
        FAILED += 1
        print(f"FAIL {name}: {detail}")
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bpf_object(tmp):
    src = os.path.join(tmp, "xdp.c")
    obj = os.path.join(tmp, "xdp.o")
    with open(src, "w") as f:
        f.write(BPF_SOURCE)
    arch = os.uname().machine
    subprocess.run(
        ["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}-linux-gnu",
         "-c", src, "-o", obj],
        check=True,
    )
    with open(obj, "rb") as f:
        return f.read()


class Server:
    """The registry binary on a free loopback port."""

    def __init__(self, binary, tmp, name, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = dict(os.environ)
        full.update({
            "BPF_REGISTRY_HTTP_ADDR": f"127.0.0.1:{self.port}",
            "BPF_REGISTRY_DATA_DIR": os.path.join(tmp, f"data-{name}"),
            "BPF_REGISTRY_LOG_LEVEL": "WARN",
        })
        full.update(env or {})
        self.log = open(os.path.join(tmp, f"server-{name}.log"), "wb")
        self.proc = subprocess.Popen([binary], env=full, stdout=self.log, stderr=self.log)
        deadline = time.time() + START_SECS
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the registry did not start (see {self.log.name})")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def create(session, url, body):
    r = session.post(url + "/artifacts", json=body, timeout=30)
    if r.status_code != 201:
        raise RuntimeError(f"create {body.get('name')}: {r.status_code} {r.text}")
    return r.json()


def watch(page, errors):
    """Collects console errors and uncaught exceptions of a page."""
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text} ({page.url})")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e} ({page.url})"))


def rows(page):
    return sorted(page.locator("tr.artifact").evaluate_all(
        "rows => rows.map(r => r.dataset.name)"))


def open_console(browser, base, shots, errors):
    # 127.0.0.1 is a secure context: the Copy buttons use the clipboard.
    ctx = browser.new_context(viewport={"width": 1280, "height": 900},
                              permissions=["clipboard-read", "clipboard-write"])
    page = ctx.new_page()
    watch(page, errors)

    r = page.goto(base + "/ui/")
    check("index loads (200)", r is not None and r.status == 200,
          r.status if r else "no response")
    check("index title", "bpf-registry" in page.title(), page.title())
    listed = rows(page)
    check("index lists the pushed artifacts",
          listed == ["net/xdp-counter", "net/xdp-counter", "ops/shared-map"], listed)
    csp = r.headers.get("content-security-policy", "") if r else ""
    check("strict CSP header", csp.startswith("default-src 'none'; script-src 'self'"), csp)
    page.screenshot(path=os.path.join(shots, "index.png"), full_page=True)

    # The type filter submits on change (the console's script).
    with page.expect_navigation():
        page.select_option("select[name=type]", "map")
    check("type filter (auto-submit)", rows(page) == ["ops/shared-map"], rows(page))
    check("filter kept in the URL", "type=map" in page.url, page.url)
    page.screenshot(path=os.path.join(shots, "filtered.png"), full_page=True)

    # Search and the architecture filter, through the form.
    page.goto(base + "/ui/")
    page.fill("input[name=q]", "xdp")
    page.fill("input[name=architecture]", "x86_64")
    with page.expect_navigation():
        page.click("form.filters button[type=submit]")
    check("search + architecture filter", rows(page) == ["net/xdp-counter"], rows(page))

    # The artifact page.
    with page.expect_navigation():
        page.click("tr.artifact a.id")
    text = page.inner_text("main")
    for needle in ["xdp_pass_all", "kprobe/do_unlinkat", "kprobe", "xdp", "pkt_count",
                   "GPL", "edge-node-7", "oras pull --plain-http", "/binary",
                   "aarch64"]:
        check(f"artifact page shows {needle!r}", needle in text, text[:400])
    check("artifact page: BTF yes", page.inner_text("dd.btf") == "yes", page.inner_text("dd.btf"))
    status = page.inner_text(".sig-status")
    check("artifact page: signature verified", status == "signed, verified", status)
    key_id = page.inner_text("code.key-id")
    check("artifact page: signing key shown", key_id.startswith("key:sha256:"), key_id)
    page.click("button.copy[data-copy=pull-oras]")
    page.wait_for_function(
        "() => document.querySelector('button.copy[data-copy=pull-oras]').textContent === 'Copied'")
    copied = page.evaluate("() => navigator.clipboard.readText()")
    check("Copy puts the oras command on the clipboard", copied.startswith("oras pull "), copied)
    page.screenshot(path=os.path.join(shots, "artifact.png"), full_page=True)

    # The host page, from the artifact's host link.
    with page.expect_navigation():
        page.click("ul.hosts a")
    check("host page lists the artifact", rows(page) == ["net/xdp-counter"], rows(page))
    page.screenshot(path=os.path.join(shots, "host.png"), full_page=True)

    # The repository page, from the table's name link.
    with page.expect_navigation():
        page.click("tr.artifact td a >> nth=0")
    text = page.inner_text("main")
    check("repository page: tag and referrer",
          "1.2.0" in text and "edge-node-7" in text, text[:400])
    page.screenshot(path=os.path.join(shots, "repository.png"), full_page=True)

    # An error page renders too (and logs the 404 it is).
    r = page.goto(base + "/ui/artifacts/sha256:" + "0" * 64)
    check("unknown artifact: 404 page with its code",
          r is not None and r.status == 404 and "not_found" in page.inner_text("main"),
          r.status if r else "no response")
    # The 404 itself is reported by Chromium as a failed resource load.
    errors[:] = [e for e in errors if "status of 404" not in e]
    ctx.close()


def auth_console(browser, base, user, password, shots, errors):
    # Without credentials: 401 and the Basic challenge a browser answers
    # with its login prompt.
    # Headless Chromium has no prompt to show: it cancels the challenge
    # and the navigation fails with ERR_INVALID_AUTH_CREDENTIALS, after
    # the 401 it answered.
    ctx = browser.new_context()
    page = ctx.new_page()
    seen = []
    page.on("response", lambda resp: seen.append(resp) if resp.url.endswith("/ui/") else None)
    asked = False
    try:
        r = page.goto(base + "/ui/")
        if r is not None:
            seen.append(r)
    except PlaywrightError as e:
        asked = "ERR_INVALID_AUTH_CREDENTIALS" in str(e)
        if not asked:
            raise
    r = seen[0] if seen else None
    challenge = r.headers.get("www-authenticate", "") if r else ""
    check("auth on: 401 without credentials", r is not None and r.status == 401,
          r.status if r else "no response")
    check("auth on: Basic challenge", challenge == 'Basic realm="bpf-registry"', challenge)
    check("auth on: the browser asked for credentials", asked, "no auth challenge handled")
    ctx.close()

    ctx = browser.new_context(http_credentials={"username": user, "password": password},
                              viewport={"width": 1280, "height": 700})
    page = ctx.new_page()
    watch(page, errors)
    r = page.goto(base + "/ui/")
    check("auth on: 200 with http_credentials", r is not None and r.status == 200,
          r.status if r else "no response")
    check("auth on: signed in", f"Signed in as {user}" in page.inner_text("header"),
          page.inner_text("header"))
    check("auth on: lists the artifact", rows(page) == ["team/probe"], rows(page))
    html = page.content()
    check("auth on: no password in the page", password not in html, "password rendered")
    page.screenshot(path=os.path.join(shots, "signed-in.png"), full_page=True)
    ctx.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--screenshots", required=True)
    args = ap.parse_args()
    os.makedirs(args.screenshots, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="bpf-registry-console.")
    servers = []
    errors = []
    try:
        obj = bpf_object(tmp)
        # Signing on (a local Ed25519 key): the artifact page shows the
        # signature, verified, and its key.
        key = os.path.join(tmp, "signing.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key],
                       check=True, capture_output=True)
        os.chmod(key, 0o600)
        open_server = Server(args.binary, tmp, "open",
                             {"BPF_REGISTRY_SIGNER": "key", "BPF_REGISTRY_SIGNING_KEY": key})
        servers.append(open_server)
        s = requests.Session()
        prog = create(s, open_server.url, {
            "name": "net/xdp-counter", "version": "1.2.0", "type": "program",
            "architecture": "x86_64", "description": "Counts packets per ingress interface",
            "tags": ["stable", "edge"], "metadata": {"owner": "netops"},
            "data": base64.b64encode(obj).decode()})
        create(s, open_server.url, {
            "name": "net/xdp-counter", "version": "1.2.0", "type": "program",
            "architecture": "aarch64", "data": base64.b64encode(b"arm build").decode()})
        create(s, open_server.url, {
            "name": "ops/shared-map", "version": "0.1.0", "type": "map",
            "architecture": "x86_64", "data": base64.b64encode(b"map payload").decode()})
        r = s.post(f"{open_server.url}/artifacts/{prog['id']}/hosts?repository=net/xdp-counter",
                   json={"host_id": "edge-node-7"}, timeout=30)
        if r.status_code != 201:
            raise RuntimeError(f"host association: {r.status_code} {r.text}")

        user, password = "console-user", "console-Pa55word"
        htpasswd = os.path.join(tmp, "htpasswd")
        subprocess.run(["htpasswd", "-Bbc", htpasswd, user, password], check=True,
                       capture_output=True)
        auth_server = Server(args.binary, tmp, "auth", {"BPF_REGISTRY_AUTH_HTPASSWD": htpasswd})
        servers.append(auth_server)
        a = requests.post(auth_server.url + "/artifacts", auth=(user, password), json={
            "name": "team/probe", "version": "2.0.0", "type": "program",
            "architecture": "x86_64", "data": base64.b64encode(obj).decode()}, timeout=30)
        if a.status_code != 201:
            raise RuntimeError(f"create with auth: {a.status_code} {a.text}")

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True,
                                        args=["--no-sandbox"])
            try:
                open_console(browser, open_server.url, args.screenshots, errors)
                auth_console(browser, auth_server.url, user, password, args.screenshots, errors)
            finally:
                browser.close()
        check("no console errors or page errors", not errors, "; ".join(errors))
    except Exception as e:  # a broken fixture is a failure, with its cause
        check("console test ran", False, repr(e))
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{PASSED} passed, {FAILED} failed")
    return 0 if FAILED == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
