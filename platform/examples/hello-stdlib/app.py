"""A pier app with nothing but Python's standard library.

pier gives every web process PORT (the port to listen on) and PIER_HOST (the runner's address);
config vars set with `pier config set` arrive as environment variables too.
"""
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GREETING = os.environ.get("GREETING", "hello")


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out in two writes: without TCP_NODELAY the body would wait for
    # the balancer's delayed ACK of the head (about 40 ms on Linux).
    disable_nagle_algorithm = True

    def do_GET(self):
        body = (
            f"{GREETING} from {os.environ.get('PIER_APP', '?')} "
            f"{os.environ.get('PIER_RELEASE', '?')} {os.environ.get('PIER_INSTANCE', '?')}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\n" % (self.address_string(), fmt % args))


def main():
    server = ThreadingHTTPServer((os.environ.get("PIER_HOST", "0.0.0.0"), int(os.environ["PORT"])), Hello)
    server.daemon_threads = True
    # SIGTERM: stop accepting, let requests in flight finish, exit.
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    print(f"listening on {server.server_address}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
