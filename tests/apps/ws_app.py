"""WebSocket echo server and client for meshd's L7 tests (Debian's python3-websockets).

server: `ws_app.py serve PORT` echoes every message.
client: `ws_app.py call ws://HOST:PORT/ N` sends N messages of growing size, prints `echoed N`
when every echo matched.
"""
import asyncio
import sys

import websockets


async def echo(ws, *_):
    async for message in ws:
        await ws.send(message)


async def serve(port):
    async with websockets.serve(echo, "0.0.0.0", port, max_size=None):
        print("listening on", port, flush=True)
        await asyncio.Future()


async def call(url, n):
    async with websockets.connect(url, max_size=None) as ws:
        for i in range(n):
            msg = ("message %d " % i) * (i * 100 + 1)
            await ws.send(msg)
            if await ws.recv() != msg:
                print("mismatch at", i)
                return
        print("echoed", n)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        asyncio.run(call(sys.argv[2], int(sys.argv[3])))
