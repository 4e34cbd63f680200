"""Raw TCP client for meshd's HTTP tests (standard library only).

raw_client.py HOST PORT PAYLOAD [--shut-write]

PAYLOAD is sent as given after Python escape decoding (\\r\\n etc.); then the reply is read
until the peer ends the connection or 10 s pass. Prints one JSON line: the reply (latin-1),
how it ended ("eof", "reset" or "timeout") and the seconds from the connect to that end.
"""
import json
import socket
import sys
import time

host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = payload.encode("latin-1").decode("unicode_escape").encode("latin-1")
start = time.monotonic()
reply, end = b"", "timeout"
try:
    # A reset can come as soon as the handshake is done: also while connecting or sending.
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(data)
    if "--shut-write" in sys.argv[4:]:
        s.shutdown(socket.SHUT_WR)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            end = "eof"
            break
        reply += chunk
except (ConnectionResetError, BrokenPipeError):
    end = "reset"
except socket.timeout:
    pass
print(json.dumps({"reply": reply.decode("latin-1"), "end": end, "secs": time.monotonic() - start}))
