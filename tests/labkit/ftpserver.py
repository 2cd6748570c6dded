"""A minimal FTP server for the lab (test tooling): USER, PASS, PWD, SYST,
TYPE, PASV, PORT, RETR, QUIT -- what ftplib needs for a passive or active
download. Files are not read from disk: `blob-N` is N bytes of content(N),
sent at --rate bytes/s so that a large one is still in flight when a test
fails a member.

    python -m tests.labkit.ftpserver --listen 198.51.100.100 --port 21 --rate 262144 --duration 300
"""
from __future__ import annotations

import argparse
import hashlib
import re
import socket
import threading
import time

CHUNK = 16384
DATA_TIMEOUT = 30.0      # seconds to wait for a data connection to open
MAX_BLOB = 1 << 30
# Commands whose answer never changes (any user, any password, one directory).
FIXED = {"USER": "331 any password", "PASS": "230 logged in", "PWD": '257 "/"',
         "SYST": "215 UNIX Type: L8", "TYPE": "200 type set"}


def content(size: int) -> bytes:
    """The bytes of blob-<size>: a hash chain, so a misplaced or missing
    piece changes the digest."""
    out, block = bytearray(), str(size).encode()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


def digest(size: int) -> str:
    return hashlib.sha256(content(size)).hexdigest()


class Session:
    """One control connection."""

    def __init__(self, conn: socket.socket, host: str, rate: int):
        self.conn, self.host, self.rate = conn, host, rate
        self.reader = conn.makefile("rb")
        self.passive: socket.socket | None = None
        self.active: tuple[str, int] | None = None

    def reply(self, text: str) -> None:
        self.conn.sendall(text.encode() + b"\r\n")

    def run(self) -> None:
        self.reply("220 fwcluster lab ftp")
        for raw in iter(lambda: self.reader.readline(512), b""):
            cmd, _, arg = raw.decode("latin-1").strip().partition(" ")
            handler = getattr(self, "do_" + cmd.upper(), None)
            if cmd.upper() in FIXED:
                self.reply(FIXED[cmd.upper()])
            elif handler is None:
                self.reply("502 not implemented")
            elif handler(arg) is False:
                return

    def do_QUIT(self, _arg):
        self.reply("221 bye")
        return False

    def do_PASV(self, _arg):
        self._forget_data()
        self.passive = socket.create_server((self.host, 0))
        port = self.passive.getsockname()[1]
        self.reply(f"227 Entering Passive Mode ({self.host.replace('.', ',')},{port >> 8},{port & 255}).")

    def do_PORT(self, arg):
        m = re.fullmatch(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", arg.strip())
        if not m:
            self.reply("501 bad PORT")
            return
        n = [int(x) for x in m.groups()]
        self._forget_data()
        self.active = (".".join(map(str, n[:4])), n[4] << 8 | n[5])
        self.reply("200 PORT ok")

    def do_RETR(self, arg):
        m = re.fullmatch(r"blob-(\d+)", arg.strip())
        if not m or int(m.group(1)) > MAX_BLOB:
            self.reply("550 no such file")
            return
        data = self._open_data()
        if data is None:
            self.reply("425 no data connection")
            return
        self.reply("150 sending")
        try:
            self._send(data, content(int(m.group(1))))
        except OSError as e:
            self.reply(f"426 transfer aborted: {e}")
            return
        finally:
            data.close()
        self.reply("226 done")

    def _send(self, data: socket.socket, blob: bytes) -> None:
        # Paced: at most `rate` bytes a second from the start.
        start = time.monotonic()
        for off in range(0, len(blob), CHUNK):
            due = start + off / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            data.sendall(blob[off:off + CHUNK])

    def _open_data(self) -> socket.socket | None:
        try:
            if self.passive is not None:
                self.passive.settimeout(DATA_TIMEOUT)
                data, _ = self.passive.accept()
            elif self.active is not None:
                data = socket.create_connection(self.active, timeout=DATA_TIMEOUT)
            else:
                return None
        except OSError:
            return None
        finally:
            self._forget_data()
        data.settimeout(DATA_TIMEOUT)
        return data

    def _forget_data(self) -> None:
        if self.passive is not None:
            self.passive.close()
        self.passive = self.active = None


def serve(host: str, port: int, rate: int, duration: float) -> None:
    listener = socket.create_server((host, port))
    listener.settimeout(0.5)
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        conn.settimeout(DATA_TIMEOUT * 4)
        threading.Thread(target=_session, args=(conn, host, rate), daemon=True).start()


def _session(conn: socket.socket, host: str, rate: int) -> None:
    with conn:
        try:
            Session(conn, host, rate).run()
        except OSError:
            pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--port", type=int, default=21)
    ap.add_argument("--rate", type=int, default=1 << 20, help="bytes/s of a RETR")
    ap.add_argument("--duration", type=float, default=300, help="seconds to serve")
    a = ap.parse_args(argv)
    serve(a.listen, a.port, a.rate, a.duration)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
