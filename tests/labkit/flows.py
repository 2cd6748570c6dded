"""Long-lived flows through the lab, every packet's arrival recorded where
the user would see it (the receiving end), on time.monotonic().

One `Flows` is a set of sessions from the client to the server, the kinds an
operator's users keep open for hours:

    name              direction         period  recorded at
    tcp up            client -> server  0.5 s   server  (one byte per send)
    tcp down          server -> client  0.5 s   client  (same connection)
    udp request       client -> server  0.5 s   server  (each is echoed:)
    udp response      server -> client          client
    udp server-push   server -> client  1 s     client  (the client spoke once, to open it)
    udp client-push   client -> server  1 s     server  (never answered)
    icmp echo         client -> server  0.2 s   client  (replies; one ICMP id)

Everything runs on one thread (a selector loop over sockets made in the
client and server namespaces) plus the ICMP Prober's, and stops by itself
after `duration` seconds. The server notes the source address and port of
every datagram and connection it gets, so a test can tell whether a flow
kept its conntrack entry (and NAT mapping) or was re-created.

    with Flows(lab) as f:          # started, the UDP push flow opened
        ...
        f.worst_gap("udp server-push", t0, t1)
"""
from __future__ import annotations

import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING

from tests.labkit.addresses import SERVER4
from tests.labkit.prober import Prober

if TYPE_CHECKING:
    from tests.labkit.lab import Lab

PERIODS = {"tcp up": 0.5, "tcp down": 0.5, "udp request": 0.5, "udp response": 0.5,
           "udp server-push": 1.0, "udp client-push": 1.0, "icmp echo": 0.2}
OPEN_TIMEOUT = 5.0     # connect / first server push; far above one round trip in the lab


class FlowError(RuntimeError):
    pass


class Flows:
    """The flow set above from `lab`'s client to `server` (see module doc).
    Ports base_port .. base_port+3 on the server."""

    def __init__(self, lab: "Lab", server: str = SERVER4, base_port: int = 47000,
                 duration: float = 400.0, source: str | None = None):
        # source: the client's address to send from (one of its addresses
        # with clients > 1; None: as routed), for the UDP and TCP flows
        self.lab, self.server, self.duration, self.source = lab, server, duration, source
        self.ports = {"tcp": base_port, "udp request": base_port + 1,
                      "udp server-push": base_port + 2, "udp client-push": base_port + 3}
        self.arrivals: dict[str, list[float]] = {name: [] for name in PERIODS}
        self.sources: dict[str, set] = {"tcp": set(), "udp request": set(),
                                        "udp server-push": set(), "udp client-push": set()}
        self.errors: dict[str, str] = {}
        self._sel = selectors.DefaultSelector()
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flows", daemon=True)
        self._push_to = None          # where the server pushes: the source of the client's hello
        self.prober: Prober | None = None

    # --- sockets ---------------------------------------------------------------------
    def _sock(self, role: str, type: int) -> socket.socket:
        s = self.lab.socket(role, socket.AF_INET, type)
        self._socks.append(s)
        return s

    def _open(self) -> None:
        srv, port = self.server, self.ports
        listener = self._sock("server", socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((srv, port["tcp"]))
        listener.listen(1)
        self.tcp_client = self._sock("client", socket.SOCK_STREAM)
        if self.source:
            self.tcp_client.bind((self.source, 0))
        self.tcp_client.settimeout(OPEN_TIMEOUT)
        self.tcp_client.connect((srv, port["tcp"]))
        listener.settimeout(OPEN_TIMEOUT)
        conn, peer = listener.accept()
        self._socks.append(conn)
        self.tcp_server = conn
        self.sources["tcp"].add(peer)
        for s in (self.tcp_client, self.tcp_server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.udp = {}
        for name in ("udp request", "udp server-push", "udp client-push"):
            server_side = self._sock("server", socket.SOCK_DGRAM)
            server_side.bind((srv, port[name]))
            client_side = self._sock("client", socket.SOCK_DGRAM)
            if self.source:
                client_side.bind((self.source, 0))
            client_side.connect((srv, port[name]))
            self.udp[name] = (client_side, server_side)
        handlers = [(self.tcp_server, self._on_bytes("tcp up")),
                    (self.tcp_client, self._on_bytes("tcp down")),
                    (self.udp["udp request"][1], self._on_request),
                    (self.udp["udp request"][0], self._on_datagram("udp response")),
                    (self.udp["udp server-push"][1], self._on_hello),
                    (self.udp["udp server-push"][0], self._on_datagram("udp server-push")),
                    (self.udp["udp client-push"][1], self._on_client_push)]
        for s, fn in handlers:
            s.setblocking(False)
            self._sel.register(s, selectors.EVENT_READ, fn)

    # --- receivers: each records the arrival time of what it got -------------------
    def _on_bytes(self, name: str):
        def on(sock: socket.socket, t: float) -> None:
            try:
                data = sock.recv(4096)
            except OSError as e:
                data, self.errors[name] = b"", f"recv: {e}"
            if not data:
                self.errors.setdefault(name, "connection closed")
                self._sel.unregister(sock)
                return
            self.arrivals[name].append(t)
        return on

    def _on_datagram(self, name: str):
        def on(sock: socket.socket, t: float) -> None:
            try:
                sock.recv(2048)
            except OSError as e:      # an ICMP error from the path: noted, the flow goes on
                self.errors[name] = f"recv: {e}"
                return
            self.arrivals[name].append(t)
        return on

    def _on_request(self, sock: socket.socket, t: float) -> None:
        data, src = sock.recvfrom(2048)
        self.arrivals["udp request"].append(t)
        self.sources["udp request"].add(src)
        sock.sendto(data, src)

    def _on_hello(self, sock: socket.socket, t: float) -> None:
        _data, src = sock.recvfrom(2048)
        self.sources["udp server-push"].add(src)
        self._push_to = src

    def _on_client_push(self, sock: socket.socket, t: float) -> None:
        _data, src = sock.recvfrom(2048)
        self.arrivals["udp client-push"].append(t)
        self.sources["udp client-push"].add(src)

    # --- senders ---------------------------------------------------------------------
    def _send(self, name: str, fn) -> None:
        try:
            fn()
        except OSError as e:          # counted as the missing arrival it causes
            self.errors[name] = f"send: {e}"

    def _senders(self):
        push_client, push_server = self.udp["udp server-push"]
        return [
            ("tcp up", lambda: self.tcp_client.send(b"u")),
            ("tcp down", lambda: self.tcp_server.send(b"d")),
            ("udp request", lambda: self.udp["udp request"][0].send(b"request")),
            ("udp server-push", lambda: self._push_to and push_server.sendto(b"push", self._push_to)),
            ("udp client-push", lambda: self.udp["udp client-push"][0].send(b"client-push")),
        ]

    def _loop(self) -> None:
        end = self.started + self.duration
        due = [[self.started, name, fn] for name, fn in self._senders()]
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= end:
                break
            for d in due:
                if now >= d[0]:
                    self._send(d[1], d[2])
                    d[0] += PERIODS[d[1]]
                    if d[0] < now:    # fell behind (scheduling): no burst
                        d[0] = now + PERIODS[d[1]]
            wait = max(0.0, min(min(d[0] for d in due), end) - time.monotonic())
            for key, _ in self._sel.select(wait):
                key.data(key.fileobj, time.monotonic())

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> "Flows":
        """Open every flow and start the loop; returns once the server has
        the server-push flow's hello (the one packet its client sends) and
        every flow has delivered once."""
        try:
            self._open()
            self.started = time.monotonic()
            self._thread.start()
            hello, _ = self.udp["udp server-push"]
            # The client speaks until the server heard it (at most a few
            # tries: the first may wait for ARP), then never again.
            for _ in range(int(OPEN_TIMEOUT / 0.2)):
                if self._push_to:
                    break
                hello.send(b"hello")
                time.sleep(0.2)
            self.prober = Prober(self.lab, "client", self.server, interval=PERIODS["icmp echo"],
                                 duration=self.duration,
                                 on_reply=lambda _s, _t, t: self.arrivals["icmp echo"].append(t))
            self.prober.start()
            if not self.lab.wait_for(lambda: all(self.arrivals.values()), OPEN_TIMEOUT, 0.05):
                silent = [n for n, a in self.arrivals.items() if not a]
                raise FlowError(f"flows never delivered: {silent}; errors {self.errors}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self.prober:
            self.prober.stop()
        self._sel.close()
        for s in self._socks:
            s.close()

    def __enter__(self) -> "Flows":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- results ---------------------------------------------------------------------
    def worst_gap(self, name: str, start: float, end: float) -> tuple[float, float]:
        """(longest time without an arrival within [start, end], when it began);
        the edges count: a flow silent since t before `end` has a gap of end - t."""
        times = [start] + [t for t in self.arrivals[name] if start < t < end] + [end]
        # an arrival just before start, if any, is where the first gap began
        before = [t for t in self.arrivals[name] if t <= start]
        if before:
            times[0] = before[-1]
        worst = max(range(len(times) - 1), key=lambda i: times[i + 1] - times[i])
        return times[worst + 1] - times[worst], times[worst]

    def last_arrival(self, name: str) -> float | None:
        a = self.arrivals[name]
        return a[-1] if a else None
