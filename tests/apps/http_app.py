"""HTTP/1.1 test app for meshd's L7 tests (standard library only).

GET /status/NNN -> status NNN; GET /sleep/MS -> 200 after MS milliseconds;
POST /sha256 -> the SHA-256 of the request body; GET /upgrade with `Upgrade: echo` ->
101, then the connection echoes bytes (what a WebSocket server does after its handshake).
"""
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
