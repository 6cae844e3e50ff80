#!/usr/bin/env python3
"""Authentication interop with the oras-py client against a bpf-registry
that has authentication on (started by conformance/auth_interop.sh).

Steps (one ``PASS step`` / ``FAIL step: reason`` line each):

- login as a writer (oras-py ``login``, then ``GET /v2/`` through the
  client to prove the registry accepts the credentials), push a file with
  the default token backend (challenge -> ``/token`` with Basic -> Bearer),
  pull it back as a pull-only user, compare bytes;
- the same with the ``basic`` backend (Basic on every request);
- refusals: the pull-only user pushing, a wrong password (for a user of
  its own, which ends up over the failed-login limit), an unknown user,
  anonymous pull of a private repository; each must fail and leave the tag
  as it was;
- anonymous pull of a repository the policy makes public.

Usage:

    python conformance/auth_interop.py --registry 127.0.0.1:PORT \
        (--insecure | --ca ca.pem) --writer alice:PW --reader bob:PW \
        [--admin admin:PW] [--victim carol] [--prefix tls]

Exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import uuid

import types

import oras.client
import oras.decorator
import oras.logger
import requests

# oras-py retries a refused request five times with sleeps of 3 to 83 s;
# the refusals below are expected, so its retries do not sleep.
oras.decorator.time = types.SimpleNamespace(sleep=lambda _s: None)
# ... nor print an error for each of them (logging level above ERROR).
oras.logger.logger.set_level(100)


def creds(s: str) -> tuple[str, str]:
    user, _, pw = s.partition(":")
    return user, pw


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.failed = 0
        self.scheme = "http" if args.insecure else "https"
        self.verify: bool | str = args.ca if args.ca else False
        self.base = f"{self.scheme}://{args.registry}"

    def step(self, name: str, fn) -> None:
        try:
            fn()
            print(f"PASS {name}")
        except Exception as e:  # noqa: BLE001 - every failure is reported
            self.failed += 1
            msg = str(e).replace("\n", " ")[:300]
            print(f"FAIL {name}: {msg}")

    def client(self, backend: str = "token", user: tuple[str, str] | None = None):
        c = oras.client.OrasClient(
            hostname=self.args.registry,
            insecure=self.args.insecure,
            tls_verify=self.verify if not self.args.insecure else False,
            auth_backend=backend,
        )
        if user:
            c.login(
                username=user[0],
                password=user[1],
                hostname=self.args.registry,
                tls_verify=bool(self.verify),
                config_path=os.path.join(self.tmp, "docker-config.json"),
            )
        return c

    def manifest_digest(self, repo: str, tag: str, user: tuple[str, str]) -> str | None:
        r = requests.get(
            f"{self.base}/v2/{repo}/manifests/{tag}",
            auth=user,
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            verify=self.verify,
            timeout=30,
        )
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.headers.get("Docker-Content-Digest")

    def main(self) -> int:
        a = self.args
        writer, reader = creds(a.writer), creds(a.reader)
        prefix = a.prefix
        with tempfile.TemporaryDirectory() as tmp:
            self.tmp = tmp
            os.environ["DOCKER_CONFIG"] = tmp
            os.chdir(tmp)
            payload = os.urandom(4096) + uuid.uuid4().bytes
            with open("prog.tar.zst", "wb") as f:
                f.write(payload)
            want = hashlib.sha256(payload).hexdigest()
            repo = f"bpf/{prefix}oras/prog"

            def login_check():
                c = self.client("token", writer)
                r = c.do_request(f"{self.base}/v2/", "GET")
                if r.status_code != 200:
                    raise RuntimeError(f"GET /v2/ after login: {r.status_code}")

            def push_pull(backend: str, tag: str):
                def run():
                    c = self.client(backend, writer)
                    r = c.push(target=f"{a.registry}/{repo}:{tag}", files=["prog.tar.zst"])
                    if getattr(r, "status_code", 201) not in (200, 201):
                        raise RuntimeError(f"push answered {r.status_code}")
                    out = os.path.join(tmp, f"out-{backend}")
                    files = self.client(backend, reader).pull(
                        target=f"{a.registry}/{repo}:{tag}", outdir=out
                    )
                    got = [f for f in files if f.endswith("prog.tar.zst")]
                    if not got:
                        raise RuntimeError(f"pull wrote {files}")
                    with open(got[0], "rb") as f:
                        if hashlib.sha256(f.read()).hexdigest() != want:
                            raise RuntimeError("pulled bytes differ")

                return run

            def refused(who: tuple[str, str] | None, action: str, backend: str = "token"):
                def run():
                    before = self.manifest_digest(repo, "v1", writer)
                    c = self.client(backend, who) if who else self.client(backend)
                    try:
                        if action == "push":
                            with open("other.bin", "wb") as f:
                                f.write(os.urandom(100))
                            r = c.push(target=f"{a.registry}/{repo}:v1", files=["other.bin"])
                        else:
                            r = c.pull(target=f"{a.registry}/{repo}:v1", outdir=os.path.join(tmp, "nope"))
                    except Exception:  # noqa: BLE001 - refusal raises
                        r = None
                    if r is not None and getattr(r, "status_code", 200) < 300 and action == "push":
                        raise RuntimeError("the push was accepted")
                    if r is not None and action == "pull" and r:
                        raise RuntimeError(f"the pull returned {r}")
                    after = self.manifest_digest(repo, "v1", writer)
                    if after != before:
                        raise RuntimeError(f"v1 changed: {before} -> {after}")

                return run

            self.step(f"oras-py {prefix}login (GET /v2/ with the saved credentials)", login_check)
            self.step(f"oras-py {prefix}push+pull, token backend", push_pull("token", "v1"))
            self.step(f"oras-py {prefix}push+pull, basic backend", push_pull("basic", "v2"))
            self.step(f"oras-py {prefix}pull-only user cannot push", refused(reader, "push"))
            self.step(f"oras-py {prefix}pull-only user cannot push (basic)", refused(reader, "push", "basic"))
            # (a user of its own: the failed logins, retried by oras-py, put
            # that user over the login limit for a minute)
            self.step(f"oras-py {prefix}wrong password cannot pull", refused((a.victim, "wrong"), "pull"))
            self.step(f"oras-py {prefix}unknown user cannot pull", refused(("mallory", "x"), "pull"))
            self.step(f"oras-py {prefix}anonymous cannot pull a private repo", refused(None, "pull"))

            if a.admin:
                admin = creds(a.admin)

                def anonymous_public():
                    pub = f"public/{prefix}oras"
                    self.client("token", admin).push(target=f"{a.registry}/{pub}:v1", files=["prog.tar.zst"])
                    files = self.client("token").pull(target=f"{a.registry}/{pub}:v1", outdir=os.path.join(tmp, "pub"))
                    if not any(f.endswith("prog.tar.zst") for f in files):
                        raise RuntimeError(f"anonymous pull wrote {files}")

                self.step(f"oras-py {prefix}anonymous pull of a public repo (anonymous token)", anonymous_public)
        return 1 if self.failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--insecure", action="store_true", help="plain http")
    g.add_argument("--ca", help="CA bundle for https")
    ap.add_argument("--writer", required=True, help="user:password allowed to push bpf/**")
    ap.add_argument("--reader", required=True, help="user:password allowed to pull bpf/** only")
    ap.add_argument("--admin", help="user:password allowed everything (for the public repo)")
    ap.add_argument("--victim", default="carol", help="a user whose wrong password is tried")
    ap.add_argument("--prefix", default="", help="prefix for step and repository names")
    args = ap.parse_args()
    if args.prefix and not args.prefix.endswith("-"):
        args.prefix += "-"
    return Run(args).main()


if __name__ == "__main__":
    sys.exit(main())
