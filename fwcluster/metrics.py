"""Prometheus exposition for carpd and syncd, on prometheus_client.

The daemons turn their status objects into prometheus_client metric
families (fwcluster/carp/metrics.py, syncd/metrics.py); render() collects
them through a CollectorRegistry and the library's text format. Two thin
outputs: a bounded HTTP endpoint (off unless [metrics] listen is set) and a
node-exporter textfile (off unless [metrics] textfile_dir is set), written
atomically so the collector never reads half a file. docs/metrics.md says
why the endpoint is ours and not the library's start_http_server.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import tempfile
import time
from collections import Counter
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)


class Families:
    """A prometheus_client collector: the families that `make()` returns at
    each collect (the daemon's status, read when scraped)."""

    def __init__(self, make: Callable[[], Iterable[Metric]]):
        self.make = make

    def collect(self) -> Iterable[Metric]:
        return self.make()


def registry(make: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Families(make))
    return reg


def render(families: Iterable[Metric]) -> str:
    """Prometheus text (format 0.0.4) of these families."""
    families = list(families)
    return generate_latest(registry(lambda: families)).decode()


# Kea's HA states (Kea 2.2 and 2.6), so that each series exists at 0
# before the state it names is entered (an alert sees it change, not appear).
KEA_HA_STATES = ("backup", "communication-recovery", "hot-standby", "load-balancing",
                 "in-maintenance", "partner-down", "partner-in-maintenance", "passive-backup",
                 "ready", "syncing", "terminated", "waiting")


def dhcp_families(status: dict, cluster: str) -> list[Metric]:
    """`fwctl dhcp --prom`: this member's Kea (fwcluster.dhcpsvc.status)."""
    node = str(status.get("node", ""))
    enabled = GaugeMetricFamily("fwcluster_dhcp_enabled", "1 when [[dhcp]] is configured",
                                labels=("node", "cluster"))
    enabled.add_metric([node, cluster], 1 if status.get("enabled") else 0)
    out: list[Metric] = [enabled]
    if not status.get("enabled"):
        return out
    out += _kea_families(status, "fwcluster_dhcp", "kea-dhcp4")
    if "v6" in status:
        out += _kea_families(status["v6"], "fwcluster_dhcp6", "kea-dhcp6")
    if status.get("lease_space_free") is not None:
        # Kea answers no grant or renewal it cannot write to the lease file
        space = GaugeMetricFamily("fwcluster_dhcp_lease_space_bytes",
                                  "Bytes free for Kea's lease file on /config")
        space.add_metric([], status["lease_space_free"])
        out.append(space)
    return out


def _kea_families(status: dict, prefix: str, program: str) -> list[Metric]:
    """One Kea server's families (dhcpsvc.status, or its "v6" part)."""
    up = GaugeMetricFamily(f"{prefix}_kea_up", f"1 while {program} answers on its control socket")
    up.add_metric([], 1 if status.get("running") else 0)
    out: list[Metric] = [up]
    for name, key, what in (("ha_state", "state", "this member's"),
                            ("partner_state", "partner_state", "the partner's (as Kea last heard it)")):
        fam = GaugeMetricFamily(f"{prefix}_{name}", f"1 for {what} {program} HA state, 0 for the others",
                                labels=("state",))
        current = status.get(key)
        for st in sorted(set(KEA_HA_STATES) | ({current} if current else set())):
            fam.add_metric([st], 1 if st == current else 0)
        out.append(fam)
    leases = GaugeMetricFamily(f"{prefix}_leases", "Addresses leased, per interface",
                               labels=("interface",))
    total = GaugeMetricFamily(f"{prefix}_pool_addresses", "Addresses in the pools, per interface",
                              labels=("interface",))
    for sub in status.get("subnets", []):
        if sub.get("assigned") is not None:
            leases.add_metric([sub["interface"]], sub["assigned"])
        if sub.get("total") is not None:
            total.add_metric([sub["interface"]], sub["total"])
    return out + [leases, total]


# Both daemons serve on the host of [metrics] listen: carpd on its port,
# syncd on the next one, so one setting places both endpoints.
PORT_OFFSETS = {"carpd": 0, "syncd": 1}


class ListenError(ValueError, OSError):
    """[metrics] listen does not parse. Both a ValueError (a config error)
    and an OSError, so the daemons' "cannot bind" handler logs it in one
    line and they run on without the endpoint."""


def parse_listen(listen: str) -> tuple[str, int]:
    """(host, port) of "IPv4:port" or "[IPv6]:port". A name is refused: it
    may resolve to several addresses, or to another one tomorrow."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ListenError(f"metrics listen {listen!r} is not host:port")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ListenError(f"metrics listen {listen!r}: {host!r} is not an IP address "
                          "(IPv4, or IPv6 in brackets)") from None
    if (ip.version == 6) != bracketed:
        raise ListenError(f"metrics listen {listen!r}: write an IPv6 address in brackets, "
                          "an IPv4 address without")
    return str(ip) if ip.version == 4 else host[1:-1], int(port)


def listen_for(listen: str, daemon: str) -> str:
    """The host:port a daemon serves metrics on, from [metrics] listen.
    ValueError when it does not parse or the daemon's port is out of range."""
    parse_listen(listen)
    host, _, port = listen.rpartition(":")
    n = int(port) + PORT_OFFSETS[daemon]
    if not 1 <= n <= 65535:
        raise ValueError(f"{daemon} metrics port {n} (listen {listen!r} + "
                         f"{PORT_OFFSETS[daemon]}) is out of range")
    return f"{host}:{n}"


def textfile_dir(configured: str, node: str) -> str:
    """[metrics] textfile_dir with "{node}" replaced by the member's name
    (for members that share one filesystem, as in the lab)."""
    return configured.replace("{node}", node)


def write_textfile(directory: str, name: str, text: str) -> str:
    """Atomically replace {directory}/{name}.prom with text (what render()
    gave: the daemons compare it to skip unchanged rewrites, so it is written
    as is rather than collected again by write_to_textfile)."""
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # node-exporter may run as another user
        path = os.path.join(directory, f"{name}.prom")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)  # a full tmpfs must not fill up with leftovers
        raise
    return path


# --- the HTTP endpoint ----------------------------------------------------------

MAX_CONNECTIONS = 16  # a scraper needs one; the rest is someone else
MAX_REQUEST = 8192  # request line and headers, bytes
REQUEST_TIMEOUT = 5.0  # seconds for a whole exchange, request in and answer out
LINGER_BYTES = 256 * 1024  # read and dropped after an error answer, so it is not lost to a RST
BUSY_TIMEOUT = 1.0  # seconds for a 503 and its linger
REFUSAL_LOG_GAP = 60.0  # seconds between log lines about refused requests
# What generate_latest writes (the library's CONTENT_TYPE_LATEST may name a
# newer format in newer versions).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RESULTS = ("ok", "bad_request", "too_large", "not_found", "bad_method", "timeout", "busy",
           "error")
REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


class _Refused(Exception):
    def __init__(self, status: int, result: str, detail: str = ""):
        self.status, self.result, self.detail = status, result, detail


class MetricsServer:
    """GET /metrics over HTTP/1.0, bounded: at most max_connections served
    at once (as many more are answered 503, beyond that reset), max_request
    bytes of request line and headers (431), timeout seconds per exchange,
    answer flushed included (then aborted), GET /metrics only (404, 405).
    Every exchange is counted by result in `counts`, which the endpoint also
    serves as fwcluster_metrics_http_requests_total."""

    def __init__(self, collect: Callable[[], str], name: str, *, max_connections: int,
                 max_request: int, timeout: float):
        self.collect, self.name = collect, name
        self.max_connections, self.max_request, self.timeout = \
            max_connections, max_request, timeout
        self.counts: Counter = Counter()
        self.server: asyncio.AbstractServer | None = None
        self._active: set[asyncio.StreamWriter] = set()  # being served
        self._refusing: set[asyncio.StreamWriter] = set()  # being told 503
        self._quiet_until = 0.0

    @property
    def sockets(self):
        return self.server.sockets

    def close(self) -> None:
        self.server.close()
        for w in [*self._active, *self._refusing]:
            w.transport.abort()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()

    def own_families(self) -> list[Metric]:
        fam = CounterMetricFamily("fwcluster_metrics_http_requests_total",
                                  "Requests to this metrics endpoint, by result",
                                  labels=("result",))
        for result in RESULTS:
            fam.add_metric([result], self.counts[result])
        return [fam]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        if len(self._active) < self.max_connections:
            slots, answer, limit = self._active, self._exchange(reader, writer), self.timeout
        elif len(self._refusing) < self.max_connections:
            # Busy: a 503, but also at most max_connections of those at once.
            self._count("busy", writer)
            slots, answer = self._refusing, self._refuse(reader, writer, _Refused(503, "busy"))
            limit = min(self.timeout, BUSY_TIMEOUT)
        else:
            self._count("busy", writer)
            writer.transport.abort()  # a bare reset: the cheapest refusal there is
            return
        slots.add(writer)
        try:
            await asyncio.wait_for(answer, limit)
        except asyncio.TimeoutError:
            if slots is self._active:
                self._count("timeout", writer)
            writer.transport.abort()  # close() would wait for a reader that never reads
        except ConnectionError:
            writer.transport.abort()
        except Exception as e:  # never a traceback per connection; keep serving
            self._count("error", writer, repr(e))
            writer.transport.abort()
        finally:
            slots.discard(writer)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            await self._request(reader)
            try:
                body = (self.collect() + render(self.own_families())).encode()
            except Exception as e:  # a bug in a family: say so, keep serving
                raise _Refused(500, "error", repr(e)) from None
        except _Refused as r:
            self._count(r.result, writer, r.detail)
            await self._refuse(reader, writer, r)
            return
        self.counts["ok"] += 1
        writer.write(self._response(200, body, ctype=CONTENT_TYPE))
        await self._close(writer)

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      r: _Refused) -> None:
        """Answer an error, then drop what the client still sends (up to
        LINGER_BYTES): closing with unread data makes the kernel send a RST,
        which can destroy the answer before the client reads it."""
        writer.write(self._response(r.status, f"{REASONS[r.status]}; see /metrics\n".encode(),
                                    r.status == 405))
        writer.write_eof()
        left = LINGER_BYTES
        while left > 0:
            chunk = await reader.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
        await self._close(writer)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        """Close once the answer is flushed (within the caller's time limit:
        the slot is not free before)."""
        writer.close()
        await writer.wait_closed()

    async def _request(self, reader: asyncio.StreamReader) -> None:
        """Read a request: _Refused unless it is GET /metrics."""
        lines, size = [], 0
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                raise _Refused(431, "too_large") from None
            except asyncio.IncompleteReadError:
                raise _Refused(400, "bad_request") from None
            size += len(line)
            if size > self.max_request:
                raise _Refused(431, "too_large")
            if line in (b"\r\n", b"\n"):
                break
            lines.append(line)
        parts = lines[0].split() if lines else []
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise _Refused(400, "bad_request")
        method, target = parts[0], parts[1]
        if target.split(b"?")[0] != b"/metrics":
            raise _Refused(404, "not_found")
        if method != b"GET":
            raise _Refused(405, "bad_method")

    @staticmethod
    def _response(status: int, body: bytes, allow: bool = False,
                  ctype: str = "text/plain; charset=utf-8") -> bytes:
        head = [f"HTTP/1.0 {status} {REASONS.get(status, 'OK')}", f"Content-Type: {ctype}",
                f"Content-Length: {len(body)}", "Connection: close"]
        if allow:
            head.append("Allow: GET")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    def _count(self, result: str, writer: asyncio.StreamWriter, detail: str = "") -> None:
        """Count a refused request; log one line per REFUSAL_LOG_GAP at most
        (a flood must not flood the journal: the counter has the rest)."""
        self.counts[result] += 1
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + REFUSAL_LOG_GAP
            log.warning("metrics endpoint %s: refused a request from %s (%s%s); further "
                        "refusals for %d s are only counted (fwcluster_metrics_http_requests_total)",
                        self.name, writer.get_extra_info("peername"), result,
                        f": {detail}" if detail else "", REFUSAL_LOG_GAP)


async def serve(listen: str, collect: Callable[[], str], *,
                max_connections: int = MAX_CONNECTIONS, max_request: int = MAX_REQUEST,
                timeout: float = REQUEST_TIMEOUT) -> MetricsServer:
    """Serve GET /metrics with collect() on listen ("IPv4:port" or
    "[IPv6]:port"). ListenError (an OSError) when listen does not parse,
    OSError when it cannot be bound."""
    host, port = parse_listen(listen)
    server = MetricsServer(collect, listen, max_connections=max_connections,
                           max_request=max_request, timeout=timeout)
    # limit: a longer line raises LimitOverrunError instead of being buffered.
    server.server = await asyncio.start_server(server.handle, host, port, limit=max_request)
    if ipaddress.ip_address(host.split("%")[0]).is_unspecified:
        log.warning("metrics endpoint %s listens on ALL INTERFACES: anyone who can reach "
                    "this member can read it (no authentication); prefer 127.0.0.1 or "
                    "the management address", listen)
    return server
