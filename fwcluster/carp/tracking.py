"""carpd's tracks: runs each [[track]]'s check and feeds the results to the
tracks core (fwcluster.carp.core.tracks), which decides the track's state.

One asyncio task per track, one check at a time, every `interval` seconds
(a check that overruns its tick starts the next at once). Nothing here
blocks the event loop: probes are non-blocking sockets awaited with a
timeout, scripts are child processes awaited with a timeout. carpd hears
of a track only when its demotion changes (`changed(name, demotion)`).
"""
from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import socket
import struct
import time
from typing import Callable

from fwcluster.carp.children import run_bounded
from fwcluster.carp.core import tracks
from fwcluster.carp.core.tracks import TrackState
from fwcluster.core.config import Track

log = logging.getLogger("carpd.track")

ICMP_ECHO = {4: (8, 0), 6: (128, 129)}  # family -> (request type, reply type)
PROTO = {4: socket.IPPROTO_ICMP, 6: socket.IPPROTO_ICMPV6}
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
_ids = itertools.count(os.getpid() & 0xFFFF)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _bound(sock: socket.socket, device: str) -> socket.socket:
    if device:
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device.encode())
    sock.setblocking(False)
    return sock


def _icmp_socket(family: int) -> tuple[socket.socket, bool]:
    """An unprivileged ICMP datagram socket if net.ipv4.ping_group_range
    allows it (the kernel matches replies to it), else a raw one (carpd runs
    as root). Returns (socket, raw)."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    try:
        return socket.socket(af, socket.SOCK_DGRAM, PROTO[family]), False
    except PermissionError:
        return socket.socket(af, socket.SOCK_RAW, PROTO[family]), True


async def check_icmp(track: Track, links) -> tuple[bool, str]:
    """One echo request to the target; a matching reply within the timeout."""
    loop = asyncio.get_running_loop()
    family = ipaddress.ip_address(track.target).version
    request, reply = ICMP_ECHO[family]
    ident, seq = next(_ids) & 0xFFFF, int(time.monotonic() * 1000) & 0xFFFF
    body = b"fwcluster-track"
    header = struct.pack("!BBHHH", request, 0, 0, ident, seq)
    packet = struct.pack("!BBHHH", request, 0, _checksum(header + body), ident, seq) + body
    sock, raw = _icmp_socket(family)
    with sock:
        _bound(sock, track.interface)
        started = loop.time()
        await loop.sock_sendto(sock, packet, (track.target, 0))
        deadline = started + track.timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return False, "no reply"
            try:
                data, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), left)
            except asyncio.TimeoutError:
                return False, "no reply"
            if raw and family == 4:
                data = data[(data[0] & 0x0F) * 4:]  # raw IPv4 sockets see the IP header
            if len(data) < 8 or ipaddress.ip_address(source[0].split("%")[0]) != \
                    ipaddress.ip_address(track.target):
                continue
            kind, _code, _sum, got_id, got_seq = struct.unpack("!BBHHH", data[:8])
            # A datagram socket's id is its port, rewritten by the kernel.
            if kind == reply and got_seq == seq and (got_id == ident or not raw):
                return True, f"reply in {(loop.time() - started) * 1000:.1f} ms"


async def check_tcp(track: Track, links) -> tuple[bool, str]:
    """A TCP connect to target:port within the timeout (then closed)."""
    loop = asyncio.get_running_loop()
    family = ipaddress.ip_address(track.target).version
    sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_STREAM)
    with sock:
        _bound(sock, track.interface)
        started = loop.time()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (track.target, track.port)), track.timeout)
        except asyncio.TimeoutError:
            return False, "connect timed out"
        except OSError as e:
            return False, os.strerror(e.errno) if e.errno else str(e)
        return True, f"connected in {(loop.time() - started) * 1000:.1f} ms"


async def check_interface(track: Track, links) -> tuple[bool, str]:
    """Carrier and operstate of the interface, asked of the kernel."""
    st = await asyncio.wait_for(links.link(track.interface), track.timeout)
    if st is None:
        return tracks.interface_ok(False, False, None), "no such interface"
    return (tracks.interface_ok(True, st.carrier, st.operstate),
            f"carrier {'on' if st.carrier else 'off'}, operstate {st.operstate}")


async def check_script(track: Track, links) -> tuple[bool, str]:
    """The operator's program exits 0 within the timeout."""
    user = None if track.user == "root" else track.user
    status, out = await run_bounded(track.command, track.timeout, user)
    text = out.decode(errors="replace").strip().replace("\n", " | ")[:200]
    if status is None:
        return False, f"killed after {track.timeout:g} s"
    return status == 0, f"exit {status}" + (f": {text}" if text else "")


CHECKS = {"interface": check_interface, "icmp": check_icmp, "tcp": check_tcp, "script": check_script}


class Tracker:
    """The member's tracks: their checks, states and demotions."""

    def __init__(self, specs: tuple[Track, ...], changed: Callable[[str, int], None], links):
        self.specs = {t.name: t for t in specs}
        self.states = {name: TrackState() for name in self.specs}
        self.changed = changed
        self.links = links  # fwcluster.carp.netlink.Links, carpd's (open before start)
        self._tasks: dict[str, asyncio.Task] = {}

    def demotions(self) -> dict[str, int]:
        """Every track's demotion source and value as things stand."""
        return {tracks.source(n): tracks.demotion(t, self.states[n]) for n, t in self.specs.items()}

    def start(self) -> None:
        for name, t in self.specs.items():
            if t.type == "script" and t.user == "root":
                log.warning("track %s: script runs as root (user = \"root\")", name)
            if name not in self._tasks:
                self._tasks[name] = asyncio.create_task(self._loop(t), name=f"track:{name}")

    def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    def reconfigure(self, specs: tuple[Track, ...]) -> None:
        """A live reload: an unchanged track keeps its state and task; a
        changed or new one starts afresh (failed, must rise); a removed one
        stops demoting."""
        new = {t.name: t for t in specs}
        for name, old in list(self.specs.items()):
            if new.get(name) != old:
                task = self._tasks.pop(name, None)
                if task is not None:
                    task.cancel()
                del self.specs[name], self.states[name]
                if name not in new:
                    self.changed(name, 0)
        for name, t in new.items():
            if name not in self.specs:
                self.specs[name], self.states[name] = t, TrackState()
                self.changed(name, tracks.demotion(t, self.states[name]))
        self.start()

    def status(self) -> list[dict]:
        now = time.monotonic()
        return [tracks.status(t, self.states[n], now) for n, t in self.specs.items()]

    async def _loop(self, t: Track) -> None:
        loop = asyncio.get_running_loop()
        tick = loop.time()
        while True:
            try:
                ok, detail = await CHECKS[t.type](t, self.links)
            except asyncio.CancelledError:
                raise
            except asyncio.TimeoutError:
                ok, detail = False, "timed out"
            except Exception as e:  # a check that cannot run is a failed check
                ok, detail = False, f"{type(e).__name__}: {e}"
            self._result(t, ok, detail)
            tick += t.interval
            now = loop.time()
            tick = max(tick, now)
            await asyncio.sleep(tick - now)

    def _result(self, t: Track, ok: bool, detail: str) -> None:
        before = self.states[t.name]
        after = tracks.observe(t, before, ok, time.monotonic(), detail)
        self.states[t.name] = after
        if after.failed != before.failed:
            log.warning("track %s (%s) %s: %s", t.name, tracks.describe(t),
                        "failed" if after.failed else "good again", detail)
            self.changed(t.name, tracks.demotion(t, after))
        elif after.held and not before.held:
            log.warning("track %s (%s) good again but held failed: %d changes in the last minute "
                        "(flap_limit %d)", t.name, tracks.describe(t),
                        len(after.changes), t.flap_limit)
