"""Raw HTTP/2 (prior knowledge) client for meshd's smuggling tests (python3-h2).

h2_client.py HOST PORT PATH BODY [NAME:VALUE ...]

Sends one POST with the given extra headers (not validated or normalised, so forbidden
ones go out as given) and BODY as its DATA, then reads until the stream ends, is reset or
the connection closes (10 s at most). Prints one JSON line: the response status (or null),
the RST_STREAM error code (or null), whether a GOAWAY came, and whether the connection
ended.
"""
import json
import socket
import sys

import h2.config
import h2.connection
import h2.events

host, port, path, body = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].encode()
extra = [tuple(h.split(":", 1)) for h in sys.argv[5:]]
s = socket.create_connection((host, port), timeout=10)
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
    client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False,
    validate_inbound_headers=False))
conn.initiate_connection()
sid = conn.get_next_available_stream_id()
headers = [(":method", "POST"), (":scheme", "http"), (":authority", host), (":path", path)]
conn.send_headers(sid, headers + extra)
conn.send_data(sid, body, end_stream=True)
s.sendall(conn.data_to_send())
result = {"status": None, "reset": None, "goaway": False, "closed": False, "ended": False}
try:
    while not (result["reset"] is not None or result["ended"]):
        data = s.recv(65536)
        if not data:
            result["closed"] = True
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                result["status"] = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                result["reset"] = int(ev.error_code)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                result["ended"] = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                result["goaway"] = True
        s.sendall(conn.data_to_send())
except socket.timeout:
    pass
print(json.dumps(result))
