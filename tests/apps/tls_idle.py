"""A TLS client that completes the handshake and then sends nothing (no HTTP/2 preface).

tls_idle.py HOST PORT CERT KEY

Connects with the client certificate CERT/KEY (the server's certificate is not checked:
this client only holds a connection), finishes the TLS 1.3 handshake, then waits up to
30 s for the server to end the connection. Prints one JSON line: whether the handshake
completed, how the connection ended ("eof", "reset" or "timeout") and the seconds from
the end of the handshake to that end.
"""
import json
import socket
import ssl
import sys
import time

host, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.set_alpn_protocols(["h2"])
ctx.load_cert_chain(cert, key)
raw = socket.create_connection((host, port), timeout=30)
s = ctx.wrap_socket(raw, do_handshake_on_connect=False)
handshake, end = False, "timeout"
s.do_handshake()
handshake = True
start = time.monotonic()
try:
    while True:
        if not s.recv(65536):
            end = "eof"
            break
except (ConnectionResetError, BrokenPipeError):
    end = "reset"
except ssl.SSLError as e:
    end = "eof" if "EOF" in str(e) else "tls:" + str(e)
except socket.timeout:
    end = "timeout"
print(json.dumps({"handshake": handshake, "end": end, "secs": round(time.monotonic() - start, 3)}))
