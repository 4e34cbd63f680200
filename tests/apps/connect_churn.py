"""Connections for the original-destination tests (review M4, case 81).

Usage: connect_churn.py MODE N HOST PORT
  noport    N connect()s that fail before their SYN: the namespace's ephemeral port range
            must be the one port 60000 (`sysctl net.ipv4.ip_local_port_range`), which this
            script holds with a bound socket, so each fails with EADDRNOTAVAIL after the
            capture recorded it; each socket closed at once.
  hold      the same, every socket kept open until all N are done.
  greeted   N ordinary connections, each reading the server's greeting line.
Prints one JSON line: how many of each outcome (`ok` or the errno name)."""

import errno
import json
import socket
import sys
from collections import Counter

mode, n, host, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
outcomes = Counter()
held = []


def noport():
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        outcomes["ok"] += 1
    except OSError as e:
        outcomes[errno.errorcode.get(e.errno, str(e))] += 1
    return s


def greeted():
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            data = b""
            while b"\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            outcomes["ok" if b"\n" in data else "no_greeting"] += 1
    except OSError as e:
        outcomes[errno.errorcode.get(e.errno, str(e))] += 1


holder = socket.socket()
if mode != "greeted":
    holder.bind(("0.0.0.0", 60000))
for _ in range(n):
    if mode == "greeted":
        greeted()
    elif mode == "hold":
        held.append(noport())
    else:
        noport().close()
print(json.dumps(outcomes), flush=True)
for s in held:
    s.close()
