#!/usr/bin/env python3
"""A pod's server for the endpoint health tests (bin/tests/endpoint_health.rs).

GET / answers the pod's name; GET /healthz answers as the state file says: `ok` (200),
`fail` (500), `hang` (accepts, reads the request, never answers). Prints `ready on` once
listening. Each connection has its own thread, so a hanging probe holds nothing else up.
"""
import argparse
import http.server
import socketserver
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-file", required=True)
    parser.add_argument("--address", default="0.0.0.0")
    args = parser.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *_):
            pass

        def do_GET(self):
            if self.path.startswith("/healthz"):
                try:
                    with open(args.state_file) as f:
                        state = f.read().strip()
                except OSError:
                    state = "ok"
                if state == "hang":
                    # Bounded: the test's cleanup kills the server long before.
                    time.sleep(600)
                    return
                code = 200 if state == "ok" else 500
                body = state.encode()
            else:
                code = 200
                body = (args.name + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server((args.address, args.port), Handler)
    print(f"ready on :{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
