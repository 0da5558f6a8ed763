"""A pier app whose static files the platform serves (see pier.toml): only the other paths
reach this process, and it logs each request it gets.

`/from-app/NAME` sends `static/NAME` from the app itself, for comparison with `/static/NAME`
served by the runner (docs/benchmarks/static.md).
"""
import os
import re
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body in two writes: without TCP_NODELAY the body waits for a delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path.startswith("/from-app/"):
            name = path[len("/from-app/"):]
            if not NAME.match(name):
                return self.answer(404, b"no such file\n", "text/plain; charset=utf-8")
            try:
                with open(os.path.join(HERE, "static", name), "rb") as f:
                    body = f.read()
            except OSError:
                return self.answer(404, b"no such file\n", "text/plain; charset=utf-8")
            return self.answer(200, body, "application/octet-stream")
        body = (
            f"hello from {os.environ.get('PIER_APP', '?')} {os.environ.get('PIER_RELEASE', '?')} "
            f"{os.environ.get('PIER_INSTANCE', '?')}: the app got {path}\n"
        ).encode()
        self.answer(200, body, "text/plain; charset=utf-8")

    def answer(self, status, body, ctype):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\n" % (self.address_string(), fmt % args))


def main():
    addr = (os.environ.get("PIER_HOST", "0.0.0.0"), int(os.environ["PORT"]))
    server = ThreadingHTTPServer(addr, App)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    print(f"listening on {server.server_address}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
