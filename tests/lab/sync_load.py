"""Bounded session load for the state-sync lab tests (run with ip netns exec).

  server --tcp PORT --udp PORT --duration S
      echoes every TCP connection and UDP datagram back.
  client --target ADDR --tcp PORT|--udp PORT --sessions N --interval 0.1
         --duration S --status FILE [--rate R]
      opens N sessions (at most R new per second), sends one small message
      per session every interval and writes FILE (JSON, atomically, every
      0.25 s): per session the wall-clock time of its last echo and any error.

Everything stops by itself after --duration seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        self.t.write(data)


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.t = transport

    def datagram_received(self, data, addr):
        self.t.sendto(data, addr)


async def server(args) -> None:
    """Echo on every address of both families (one dual-stack UDP socket)."""
    loop = asyncio.get_running_loop()
    servers = []
    if args.tcp:
        servers.append(await loop.create_server(Echo, None, args.tcp, backlog=4096,
                                                reuse_address=True))
    if args.udp:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", args.udp))
        t, _ = await loop.create_datagram_endpoint(UdpEcho, sock=s)
        servers.append(t)
    await asyncio.sleep(args.duration)
    for s in servers:
        s.close()


class Session(asyncio.Protocol):
    def __init__(self, state: list, i: int):
        self.state, self.i = state, i
        self.t = None

    def connection_made(self, transport):
        self.t = transport
        self.state[self.i][2] = transport.get_extra_info("sockname")[1]
        self.state[self.i][3] = time.time()

    def data_received(self, data):
        self.state[self.i][0] = time.time()

    def datagram_received(self, data, addr):
        self.state[self.i][0] = time.time()

    def error_received(self, exc):
        self.state[self.i][1] = f"{type(exc).__name__}: {exc}"

    def connection_lost(self, exc):
        if self.state[self.i][1] is None:
            self.state[self.i][1] = f"closed: {exc}"
        self.t = None


async def client(args) -> None:
    loop = asyncio.get_running_loop()
    end = time.monotonic() + args.duration
    state = [[None, None, None, None] for _ in range(args.sessions)]   # last echo, error, port, opened
    sessions: list[Session | None] = [None] * args.sessions
    fam = socket.AF_INET6 if ":" in args.target else socket.AF_INET

    async def open_one(i):
        proto = Session(state, i)
        try:
            if args.tcp:
                await asyncio.wait_for(loop.create_connection(lambda: proto, args.target, args.tcp,
                                                              family=fam), 10)
            else:
                await loop.create_datagram_endpoint(lambda: proto, remote_addr=(args.target, args.udp),
                                                    family=fam)
            sessions[i] = proto
        except (OSError, asyncio.TimeoutError) as e:
            state[i][1] = f"connect: {type(e).__name__}: {e}"

    async def opener():
        step = 1.0 / args.rate
        batch = []
        for i in range(args.sessions):
            batch.append(asyncio.create_task(open_one(i)))
            await asyncio.sleep(step)
        await asyncio.gather(*batch)

    async def writer():
        msg = b"ping-%d\n"
        n = 0
        while time.monotonic() < end:
            # Spread the sessions over the interval in 10 slices.
            for s in range(10):
                for i in range(s, args.sessions, 10):
                    p = sessions[i]
                    if p is not None and p.t is not None:
                        try:
                            if args.tcp:
                                p.t.write(msg % n)
                            else:
                                p.t.sendto(msg % n)
                        except OSError as e:
                            state[i][1] = f"send: {e}"
                await asyncio.sleep(args.interval / 10)
            n += 1

    async def reporter():
        tmp = args.status + ".tmp"
        while True:
            with open(tmp, "w") as f:
                json.dump({"time": time.time(), "sessions": args.sessions,
                           "opened": sum(p is not None for p in sessions),
                           "last": [s[0] for s in state], "errors": [s[1] for s in state],
                           "ports": [s[2] for s in state], "opened_at": [s[3] for s in state]}, f)
            os.replace(tmp, args.status)
            if time.monotonic() >= end:
                return
            # A handful of sessions (a probe) reports often, a big load less so.
            await asyncio.sleep(0.05 if args.sessions <= 10 else 0.25)

    tasks = [asyncio.create_task(opener()), asyncio.create_task(writer())]
    await reporter()
    for t in tasks:
        t.cancel()
    for p in sessions:
        if p is not None and p.t is not None:
            p.t.abort()


def main() -> None:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["server", "client"])
    ap.add_argument("--target")
    ap.add_argument("--tcp", type=int)
    ap.add_argument("--udp", type=int)
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--status")
    args = ap.parse_args()
    args.duration = min(args.duration, 600)   # bounded, whatever the caller asks
    asyncio.run(server(args) if args.mode == "server" else client(args))


if __name__ == "__main__":
    main()
