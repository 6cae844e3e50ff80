#!/usr/bin/env python3
"""replica_proxy.py - a round-robin HTTP/1.1 reverse proxy over registry
replicas, *per request* (not per connection): the next request, whatever
connection it arrives on, goes to the next replica. So one client's upload
session has its POST, PATCHes and PUT served by different replicas, which
is what a load balancer without sticky sessions may do.

  replica_proxy.py --listen-port-file F URL1 URL2 URL3

Listens on a free 127.0.0.1 port (written to F), forwards each request with
its body (Content-Length or chunked, buffered: test traffic only) to the
next replica, and returns the answer with a Content-Length. Prints, on
SIGTERM or when F.stats is asked for, how many requests each replica served
into F.stats (JSON). Test tooling only: loopback, no TLS.
"""

import argparse
import http.client
import http.server
import itertools
import json
import os
import signal
import sys
import threading
import urllib.parse

HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen-port-file", required=True)
    ap.add_argument("upstreams", nargs="+")
    args = ap.parse_args()
    ups = [urllib.parse.urlparse(u) for u in args.upstreams]
    turn = itertools.cycle(range(len(ups)))
    lock = threading.Lock()
    served = [0] * len(ups)

    def write_stats():
        with open(args.listen_port_file + ".stats", "w") as f:
            json.dump({"served": served}, f)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # quiet
            pass

        def body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def forward(self):
            data = self.body()
            with lock:
                i = next(turn)
                served[i] += 1
            up = ups[i]
            # Every header line as sent (a client may send several Accept
            # lines: each one counts).
            headers = [(k, v) for k, v in self.headers.items()
                       if k.lower() not in HOP and k.lower() not in ("content-length", "host")]
            try:
                c = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
                c.putrequest(self.command, self.path, skip_accept_encoding=True)
                for k, v in headers:
                    c.putheader(k, v)
                if data or self.command in ("POST", "PUT", "PATCH"):
                    c.putheader("Content-Length", str(len(data)))
                c.endheaders(data or None)
                r = c.getresponse()
                payload = r.read()
                resp_headers = [(k, v) for k, v in r.getheaders() if k.lower() not in HOP]
                status, reason = r.status, r.reason
                c.close()
            except OSError as e:
                msg = f"replica {i + 1} ({up.netloc}) unreachable: {e}".encode()
                self.send_response(502)
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                self.wfile.write(msg)
                return
            self.send_response_only(status, reason)
            has_length = False
            for k, v in resp_headers:
                if k.lower() == "content-length":
                    has_length = True
                    if self.command == "HEAD":
                        self.send_header(k, v)  # the entity's length, no body follows
                    continue
                self.send_header(k, v)
            if self.command != "HEAD" and status not in (204, 304):
                self.send_header("Content-Length", str(len(payload)))
            elif not has_length and self.command == "HEAD":
                self.send_header("Content-Length", "0")
            self.end_headers()
            if self.command != "HEAD" and status not in (204, 304):
                self.wfile.write(payload)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = forward

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True

    def stop(*_):
        write_stats()
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    tmp = args.listen_port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.replace(tmp, args.listen_port_file)
    srv.serve_forever()
    write_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main())
