"""Injects one TCP SYN for DST:PORT into this network namespace through a veth pair made
here (review M5): the frame leaves `m5a` and is received on `m5b`, which holds DST as a
local address, so the kernel delivers it locally in this namespace (sk_lookup runs).
Prints one JSON line: what came back on `m5a` within a second (`rst`, `synack` or none).

Usage: inject_syn.py DST PORT (root in the namespace)."""

import json
import socket
import struct
import subprocess
import sys
import time

dst, port = sys.argv[1], int(sys.argv[2])
SRC = "192.0.2.1"  # TEST-NET-1: not local here, so not a martian
SPORT = 40000


def sh(*args):
    subprocess.run(args, check=True)


sh("ip", "link", "add", "m5a", "type", "veth", "peer", "name", "m5b")
sh("ip", "addr", "add", f"{dst}/32", "dev", "m5b")
sh("ip", "link", "set", "m5a", "up")
sh("ip", "link", "set", "m5b", "up")
sh("ip", "route", "add", f"{SRC}/32", "dev", "m5b")
for conf in ("all", "m5b"):
    sh("sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0")
time.sleep(0.2)


def mac(dev):
    # `ip`, not /sys/class/net: /sys is the host's (this process only entered the netns).
    out = subprocess.run(["ip", "-j", "link", "show", "dev", dev], check=True, capture_output=True)
    return bytes.fromhex(json.loads(out.stdout)[0]["address"].replace(":", ""))


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# Replies to SRC leave m5b for m5a without ARP (nothing here answers for SRC).
sh("ip", "neigh", "add", SRC, "lladdr", mac("m5a").hex(":"), "dev", "m5b")

src_ip, dst_ip = socket.inet_aton(SRC), socket.inet_aton(dst)
tcp = struct.pack("!HHIIBBHHH", SPORT, port, 1000, 0, 5 << 4, 0x02, 64240, 0, 0)
pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src_ip, dst_ip)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
frame = mac("m5b") + mac("m5a") + b"\x08\x00" + ip + tcp

s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind(("m5a", 0))
s.settimeout(0.2)
s.send(frame)
reply = None
deadline = time.time() + 1.0
while time.time() < deadline and reply is None:
    try:
        data = s.recv(2048)
    except socket.timeout:
        continue
    pkt = data[14:]
    if len(pkt) < 40 or pkt[9] != 6 or pkt[12:16] != dst_ip or pkt[16:20] != src_ip:
        continue
    ihl = (pkt[0] & 0xF) * 4
    sp, dp = struct.unpack("!HH", pkt[ihl : ihl + 4])
    if sp != port or dp != SPORT:
        continue
    flags = pkt[ihl + 13]
    reply = "rst" if flags & 0x04 else ("synack" if flags & 0x12 == 0x12 else hex(flags))
print(json.dumps({"reply": reply}))
