"""Traffic of the chaos soak: long-lived flows through the vips, every reply
timestamped, and short flows opened all along.

Long-lived flows (client -> server, so they cross whichever member holds
the vips; the ruleset lets only LAN -> WAN open flows):
  tcp4-a, tcp4-b, tcp6  a TCP connection, 16 bytes every `interval`, echoed
  udp4, udp6            a datagram every `interval` each way (echo)
  push4, push6          server push: one datagram from the client opens the
                        flow, then only the server sends, every `interval`
  icmp4, icmp6          echo requests of one id (a Prober)
  tcp4-slow, udp4-slow  one echo every SLOW_EVERY s: an idle flow lives on its
                        conntrack timeout, not on a stream of packets
One thread serves and drives every socket (selectors), a second opens a
short TCP session every `short_every` seconds. Both stop by themselves at
`until` (time.monotonic()), whatever the caller does.
"""
from __future__ import annotations

import selectors
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field

from tests.labkit.addresses import SERVER4, SERVER6
from tests.labkit.prober import Prober

TCP_PORT, UDP_PORT, PUSH_PORT = 5101, 5102, 5103
MSG = b"chaos-flow-bytes"
LONG = ("tcp4-a", "tcp4-b", "tcp6", "udp4", "udp6", "push4", "push6", "icmp4", "icmp6",
        "tcp4-slow", "udp4-slow")
SLOW_EVERY = 20.0


@dataclass
class Flow:
    name: str
    generation: int                 # 0 first, +1 each time it is reopened after a loss
    opened: float
    every: float                    # seconds between the client's sends
    replies: list[float] = field(default_factory=list)   # time.monotonic() of each reply
    error: str | None = None
    next_send: float = 0.0
    port: int = 0                   # client port (TCP, UDP) or ICMP id: its conntrack entry
    sock: socket.socket | None = None
    prober: Prober | None = None

    @property
    def proto(self) -> str:
        """conntrack's name of the flow's protocol."""
        if self.name.startswith("icmp"):
            return "icmpv6" if self.name.endswith("6") else "icmp"
        return "tcp" if self.name.startswith("tcp") else "udp"

    @property
    def last(self) -> float:
        times = self.prober.reply_times()[-1:] if self.prober else self.replies[-1:]
        return times[0] if times else 0.0

    def times(self) -> list[float]:
        return self.prober.reply_times() if self.prober else list(self.replies)

    def max_gap(self, t0: float, t1: float) -> float:
        """Longest silence of the flow between t0 and t1 (replies only)."""
        ts = [t0] + [t for t in self.times() if t0 < t < t1] + [t1]
        return max(b - a for a, b in zip(ts, ts[1:]))


class Traffic:
    def __init__(self, lab, until: float, interval: float = 0.1, short_every: float = 1.0):
        self.lab = lab
        self.until = until
        self.interval = interval
        self.short_every = short_every
        self.flows: dict[str, Flow] = {}
        self.retired: list[Flow] = []
        self.short: list[tuple[float, bool, str]] = []   # (time, ok, error)
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribers: dict[str, tuple] = {}   # push flow -> client address
        self._servers: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.broken: list[str] = []      # exceptions in the traffic thread (never expected)

    # --- set-up -----------------------------------------------------------------
    def start(self) -> "Traffic":
        listener = self._server_sock(socket.SOCK_STREAM, TCP_PORT)
        listener.listen(64)
        self._watch(listener, self._accept)
        self._watch(self._server_sock(socket.SOCK_DGRAM, UDP_PORT), self._echo_udp)
        self._push_sock = self._server_sock(socket.SOCK_DGRAM, PUSH_PORT)
        self._watch(self._push_sock, self._subscribe)
        for target, run in ((self._loop, "chaos-traffic"), (self._short_loop, "chaos-short")):
            t = threading.Thread(target=target, name=run, daemon=True)
            t.start()
            self._threads.append(t)
        for name in LONG:
            self.open(name)
        return self

    def _server_sock(self, kind: int, port: int) -> socket.socket:
        """One dual-stack socket in the server's namespace."""
        s = self.lab.socket("server", socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        s.setblocking(False)
        self._servers.append(s)
        return s

    def _watch(self, sock: socket.socket, handler) -> None:
        with self._lock:
            self._sel.register(sock, selectors.EVENT_READ, handler)

    def open(self, name: str) -> Flow:
        """(Re)open a long-lived flow: a new socket, so a new conntrack entry.
        The flow it replaces goes to `retired`."""
        old = self.flows.get(name)
        gen = old.generation + 1 if old else 0
        if old:
            self._close(old)
            self.retired.append(old)
        flow = Flow(name, gen, time.monotonic(), SLOW_EVERY if name.endswith("slow") else self.interval)
        v6 = "6" in name
        target = SERVER6 if v6 else SERVER4
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        try:
            if name.startswith("icmp"):
                flow.prober = Prober(self.lab, "client", target, interval=self.interval,
                                     duration=max(1.0, self.until - time.monotonic())).start()
                flow.port = flow.prober.ident
            elif name.startswith("tcp"):
                s = self.lab.socket("client", fam, socket.SOCK_STREAM)
                s.settimeout(3)
                s.connect((target, TCP_PORT))
                s.setblocking(False)
                flow.sock = s
                flow.port = s.getsockname()[1]
            else:
                s = self.lab.socket("client", fam, socket.SOCK_DGRAM)
                s.connect((target, PUSH_PORT if name.startswith("push") else UDP_PORT))
                s.setblocking(False)
                flow.sock = s
                flow.port = s.getsockname()[1]
                if name.startswith("push"):
                    s.send(b"sub " + name.encode())
        except OSError as e:
            flow.error = f"open: {e}"
        with self._lock:
            self.flows[name] = flow
            if flow.sock is not None:
                self._sel.register(flow.sock, selectors.EVENT_READ, self._client_reply(flow))
        return flow

    def _close(self, flow: Flow) -> None:
        if flow.prober:
            flow.prober.stop()
        if flow.sock is not None:
            with self._lock:
                try:
                    self._sel.unregister(flow.sock)
                except (KeyError, ValueError):
                    pass
            flow.sock.close()
            flow.sock = None

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for flow in self.flows.values():
            self._close(flow)
        with self._lock:
            for s in self._servers + [k.fileobj for k in list(self._sel.get_map().values())]:
                try:
                    s.close()
                except OSError:
                    pass
            self._sel.close()

    # --- the traffic thread -------------------------------------------------------
    def _loop(self) -> None:
        next_send = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < self.until:
            with self._lock:
                if not self._sel.get_map():
                    break
            try:
                for key, _ in self._sel.select(timeout=0.02):
                    key.data(key.fileobj)
                now = time.monotonic()
                if now >= next_send:
                    self._send_round()
                    next_send = max(next_send + self.interval, now)
            except Exception:       # the soak's own bug: flows would look lost
                self.broken.append(traceback.format_exc())
                if len(self.broken) > 10:
                    return

    def _send_round(self) -> None:
        now = time.monotonic()
        with self._lock:
            flows = [f for f in self.flows.values() if f.sock is not None]
            subscribers = list(self._subscribers.values())
        for f in flows:
            if f.name.startswith(("tcp", "udp")) and now >= f.next_send:
                f.next_send = max(f.next_send + f.every, now)
                try:
                    f.sock.send(MSG)
                except (BlockingIOError, InterruptedError):
                    pass            # a stalled TCP session's buffer: it is retransmitting
                except OSError as e:
                    self._error(f, f"send: {e}")
        for addr in subscribers:
            try:
                self._push_sock.sendto(MSG, addr)
            except OSError:
                pass                # no route/neighbour for a moment: a lost push, as on a wire

    def _error(self, flow: Flow, why: str) -> None:
        """A TCP session is over on any socket error. UDP is not: an ICMP
        error (no neighbour for the gateway during a blackout, say) is
        reported on the next call and the flow goes on when the path returns."""
        if flow.name.startswith("tcp"):
            self._fail(flow, why)
        else:
            flow.error = why

    def _fail(self, flow: Flow, why: str) -> None:
        if flow.error is None:
            flow.error = why
        with self._lock:
            try:
                self._sel.unregister(flow.sock)
            except (KeyError, ValueError):
                pass

    def _client_reply(self, flow: Flow):
        def handler(sock: socket.socket) -> None:
            try:
                data = sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._error(flow, f"recv: {e}")
                return
            if not data and flow.name.startswith("tcp"):
                self._fail(flow, "closed by the peer")
                return
            flow.replies.append(time.monotonic())
        return handler

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.setblocking(False)
        self._watch(conn, self._echo_tcp)

    def _echo_tcp(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
            if data:
                conn.send(data)
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        with self._lock:
            self._sel.unregister(conn)
        conn.close()

    def _echo_udp(self, s: socket.socket) -> None:
        try:
            data, addr = s.recvfrom(4096)
            s.sendto(data, addr)
        except OSError:
            pass

    def _subscribe(self, s: socket.socket) -> None:
        try:
            data, addr = s.recvfrom(4096)
        except OSError:
            return
        if data.startswith(b"sub "):
            with self._lock:
                self._subscribers[data[4:].decode(errors="replace")] = addr

    # --- short flows --------------------------------------------------------------
    def _short_loop(self) -> None:
        n = 0
        while not self._stop.wait(self.short_every) and time.monotonic() < self.until:
            v6 = n % 2 == 1
            n += 1
            ok, err = self._one_short(v6)
            self.short.append((time.monotonic(), ok, err))

    def _one_short(self, v6: bool) -> tuple[bool, str]:
        """Connect, one echo, close; 2 s for each step."""
        fam, target = (socket.AF_INET6, SERVER6) if v6 else (socket.AF_INET, SERVER4)
        try:
            s = self.lab.socket("client", fam, socket.SOCK_STREAM)
        except OSError as e:
            return False, f"socket: {e}"
        try:
            s.settimeout(2)
            s.connect((target, TCP_PORT))
            s.sendall(MSG)
            got = b""
            while len(got) < len(MSG):
                chunk = s.recv(4096)
                if not chunk:
                    return False, "closed before the echo"
                got += chunk
            return True, ""
        except OSError as e:
            return False, f"{'v6' if v6 else 'v4'}: {e}"
        finally:
            s.close()

    def short_flow(self, v6: bool = False) -> tuple[bool, str]:
        """One short session now (the checkpoint's "new flows pass")."""
        return self._one_short(v6)
