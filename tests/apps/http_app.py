"""HTTP/1.1 test app for meshd's L7 tests (standard library only).

GET /status/NNN -> status NNN; GET /sleep/MS -> 200 after MS milliseconds;
POST /sha256 -> the SHA-256 of the request body; GET /upgrade with `Upgrade: echo` ->
101, then the connection echoes bytes (what a WebSocket server does after its handshake);
GET /headers -> the request's headers as a JSON list of [name, value], with hop-by-hop
headers in the response (`Connection: X-Resp-Hop`, `X-Resp-Hop`, `Keep-Alive`,
`Proxy-Connection`, `Upgrade`, `Trailer`) and `X-Resp-Kept`; GET /close -> the connection
is closed without a response.
"""
import json
import hashlib
import http.server
import socketserver
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = self.path.split("/")
        if self.path.startswith("/status/"):
            code = int(parts[2])
            self.reply(code, b"status %d\n" % code)
        elif self.path.startswith("/sleep/"):
            time.sleep(int(parts[2]) / 1000.0)
            self.reply(200, b"slept\n")
        elif self.path == "/headers":
            body = json.dumps([[k.lower(), v] for k, v in self.headers.items()]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "X-Resp-Hop")
            self.send_header("X-Resp-Hop", "secret")
            self.send_header("Keep-Alive", "timeout=5")
            self.send_header("Proxy-Connection", "keep-alive")
            self.send_header("Upgrade", "h2c")
            self.send_header("Trailer", "X-Checksum")
            self.send_header("X-Resp-Kept", "yes")
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/close":
            self.close_connection = True
        elif self.path == "/upgrade" and self.headers.get("Upgrade", "").lower() == "echo":
            self.send_response(101)
            self.send_header("Upgrade", "echo")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(data)
            self.close_connection = True
        else:
            self.reply(200, b"ok\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        digest = hashlib.sha256()
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            length -= len(chunk)
        self.reply(200, digest.hexdigest().encode() + b"\n")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    server = Server(("0.0.0.0", int(sys.argv[1])), Handler)
    print("listening on", sys.argv[1], flush=True)
    server.serve_forever()
