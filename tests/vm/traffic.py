"""Long-lived TCP sessions through the cluster: an echo server and a client
holding N connections, each sending a line every interval and expecting it back.

    python3 -m tests.vm.traffic server --listen 198.51.100.100:7000 --duration 900
    python3 -m tests.vm.traffic client --target 198.51.100.100:7000 --sessions 200
    python3 -m tests.vm.traffic server --listen 2001:db8:2::100:7000   (IPv6: ADDRESS:PORT too)

Both run in the lab's namespaces and stop by themselves after --duration.
The client reads commands on stdin and answers each with one JSON line:
  report  sessions open / failed, the oldest reply's age, and the largest
          gap between two consecutive replies (of any session) since the
          last report, with when it ended: the takeover gap seen by the client;
          and the longest wait of one session for its next reply (the gap
          a single connection saw).
  stop    close everything and exit.
"""
from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import threading
import time


def server(listen: str, duration: float) -> int:
    host, port = listen.rsplit(":", 1)  # an IPv6 address keeps its colons
    ls = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, int(port)))
    ls.listen(512)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ)
    print("listening", flush=True)
    end = time.monotonic() + duration
    while time.monotonic() < end:
        for key, _ in sel.select(0.5):
            if key.fileobj is ls:
                try:
                    c, _ = ls.accept()
                except BlockingIOError:
                    continue
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
                continue
            c = key.fileobj
            try:
                data = c.recv(4096)
            except (ConnectionError, BlockingIOError):
                data = b""
            if data:
                try:
                    c.send(data)  # a few bytes: the send buffer always has room
                except OSError:
                    data = b""
            if not data:
                sel.unregister(c)
                c.close()
    return 0


class Client:
    def __init__(self, target: str, sessions: int, interval: float):
        host, port = target.rsplit(":", 1)
        self.addr, self.n, self.interval = (host, int(port)), sessions, interval
        self.lock = threading.Lock()
        self.last_reply: dict[int, float] = {}
        self.failed: dict[int, str] = {}
        self.last_any = 0.0
        self.max_gap = (0.0, 0.0)  # (gap, time it ended)
        self.max_session_gap = (0.0, -1)  # (gap, session)
        self.socks: dict[socket.socket, int] = {}

    def connect(self, timeout: float = 30.0) -> None:
        for i in range(self.n):
            s = socket.create_connection(self.addr, timeout=timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            self.socks[s] = i
            self.last_reply[i] = time.monotonic()

    def run(self, duration: float, stop: threading.Event) -> None:
        sel = selectors.DefaultSelector()
        for s in self.socks:
            sel.register(s, selectors.EVENT_READ)
        end = time.monotonic() + duration
        next_send = time.monotonic()
        while not stop.is_set() and time.monotonic() < end:
            now = time.monotonic()
            if now >= next_send:
                for s, i in list(self.socks.items()):
                    if i not in self.failed:
                        try:
                            s.send(f"{i} {now:.3f}\n".encode())
                        except BlockingIOError:
                            pass  # buffered while the path is down: TCP retransmits
                        except OSError as e:
                            self._fail(i, f"send: {e}")
                next_send = now + self.interval
            for key, _ in sel.select(max(0.0, next_send - time.monotonic())):
                s, i = key.fileobj, self.socks[key.fileobj]
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    data, err = b"", str(e)
                else:
                    err = "closed by peer"
                if not data:
                    sel.unregister(s)
                    self._fail(i, err)
                    continue
                self._reply(i)
        for s in self.socks:
            s.close()

    def _fail(self, i: int, why: str) -> None:
        with self.lock:
            self.failed.setdefault(i, why)

    def _reply(self, i: int) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.last_reply[i] > self.max_session_gap[0]:
                self.max_session_gap = (now - self.last_reply[i], i)
            self.last_reply[i] = now
            if self.last_any and now - self.last_any > self.max_gap[0]:
                self.max_gap = (now - self.last_any, now)
            self.last_any = now

    def report(self) -> dict:
        now = time.monotonic()
        with self.lock:
            alive = [i for i in range(self.n) if i not in self.failed]
            oldest = max((now - self.last_reply[i] for i in alive), default=0.0)
            gap, at = self.max_gap
            one, session = self.max_session_gap
            self.max_gap, self.max_session_gap = (0.0, 0.0), (0.0, -1)
            return {"sessions": self.n, "open": len(alive), "failed": dict(self.failed),
                    "oldest_reply_s": round(oldest, 3), "max_gap_s": round(gap, 3),
                    "max_gap_ended_s_ago": round(now - at, 3) if at else None,
                    "max_session_gap_s": round(one, 3), "max_session_gap_session": session}


def client(target: str, sessions: int, interval: float, duration: float) -> int:
    c = Client(target, sessions, interval)
    c.connect()
    stop = threading.Event()
    t = threading.Thread(target=c.run, args=(duration, stop), daemon=True)
    t.start()
    print(json.dumps({"connected": sessions}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "report":
            print(json.dumps(c.report()), flush=True)
        elif cmd == "stop":
            break
    stop.set()
    t.join(5)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.vm.traffic")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--listen", required=True)
    s.add_argument("--duration", type=float, default=900)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--sessions", type=int, default=200)
    c.add_argument("--interval", type=float, default=0.1)
    c.add_argument("--duration", type=float, default=900)
    a = ap.parse_args(argv)
    if a.cmd == "server":
        return server(a.listen, a.duration)
    return client(a.target, a.sessions, a.interval, a.duration)


if __name__ == "__main__":
    sys.exit(main())
