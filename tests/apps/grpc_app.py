"""A gRPC-shaped HTTP/2 (prior knowledge) server for meshd's L7 tests (python3-h2).

Answers every request with `:status 200`, `content-type: application/grpc`, one
length-prefixed message echoing the request body, and the trailer `grpc-status`: the
number after `/grpc.test.Echo/Status` in the path (e.g. /grpc.test.Echo/Status13), else 0.
Prints `request PATH` for each request it receives.
"""
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events


def serve(sock):
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    bodies, paths = {}, {}
    while True:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = dict((k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v) for k, v in event.headers)
                paths[event.stream_id] = headers.get(":path", "")
                print("request", headers.get(":path", ""), flush=True)
                bodies[event.stream_id] = b""
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] += event.data
                conn.acknowledge_received_data(len(event.data), event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                sid = event.stream_id
                path = paths.pop(sid, "")
                status = "0"
                if "/Status" in path:
                    status = path.rsplit("/Status", 1)[1] or "0"
                body = bodies.pop(sid, b"")
                conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
                conn.send_data(sid, body)
                conn.send_headers(sid, [("grpc-status", status), ("grpc-message", "test")], end_stream=True)
        sock.sendall(conn.data_to_send())
    sock.close()


if __name__ == "__main__":
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", int(sys.argv[1])))
    listener.listen(64)
    print("listening on", sys.argv[1], flush=True)
    while True:
        s, _ = listener.accept()
        threading.Thread(target=serve, args=(s,), daemon=True).start()
