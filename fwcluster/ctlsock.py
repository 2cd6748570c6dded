"""Local control channel: JSON lines over a unix socket.

carpd listens on {run_dir}/carpd.sock, syncd on {run_dir}/syncd.sock. A
request is one JSON object with a "cmd" key; the reply is one JSON object
with "ok" (bool) and either the result fields or "error". fwctl uses the
blocking client; the daemons use the asyncio server.

A daemon may also offer streaming commands (carpd's "subscribe"): the reply
is then a series of JSON lines, until the stream ends or the client closes.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from fwcluster.core import contract

Handler = Callable[[dict], Awaitable[dict]]
Stream = Callable[[dict], AsyncIterator[dict]]  # request -> the lines to send
MAX_LINE = 1 << 20  # a reply (a client reads up to this per line)
MAX_REQUEST = 64 << 10  # a request line; longer ones are refused and the connection closed
MAX_CLIENTS = 32  # concurrent connections, streams included
IDLE_TIMEOUT = 60.0  # seconds a connection may sit without sending a request


class ControlError(Exception):
    pass


def socket_path(run_dir: str, daemon: str) -> str:
    return str(Path(run_dir) / f"{daemon}.sock")


async def serve(path: str, handler: Handler,
                streams: dict[str, Stream] | None = None) -> asyncio.AbstractServer:
    """Serve requests on a unix socket (mode 0600: root-only control).
    streams: commands whose reply is a stream of lines; the connection
    carries that stream from then on, and closes when it ends.

    Bounded: MAX_CLIENTS connections, MAX_REQUEST bytes a request, and a
    connection idle for IDLE_TIMEOUT is closed. Anything else a client sends
    gets a one-line {"ok": false, "error": ...} reply, never a crash."""
    streams = streams or {}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    active = 0

    def refuse(writer, error: str) -> None:
        writer.write(json.dumps({"ok": False, "error": error}).encode() + b"\n")

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        nonlocal active
        if active >= MAX_CLIENTS:
            refuse(writer, f"busy: {MAX_CLIENTS} control connections open")
            writer.close()
            return
        active += 1
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_TIMEOUT)
                except asyncio.LimitOverrunError:
                    refuse(writer, f"request longer than {MAX_REQUEST} bytes")
                    await writer.drain()
                    return
                except asyncio.IncompleteReadError as e:
                    if e.partial.strip():
                        refuse(writer, "request not terminated by a newline")
                    return
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                        raise ValueError("request must be an object with a string 'cmd'")
                    if req["cmd"] in streams:
                        await _stream(streams[req["cmd"]](req), reader, writer)
                        return
                    reply = await handler(req)
                except RecursionError:
                    reply = {"ok": False, "error": "request nested too deeply"}
                except Exception as e:  # a bad request must never kill the daemon
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            pass
        finally:
            active -= 1
            writer.close()

    # Bound under a umask of 077: the socket is 0600 from its first moment
    # (a chmod after bind leaves a window at the process umask).
    old = os.umask(0o077)
    try:
        server = await asyncio.start_unix_server(client, path=path, limit=MAX_REQUEST)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


async def _stream(lines: AsyncIterator[dict], reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    """Write each line of the stream until it ends or the client hangs up
    (noticed by a pending read)."""
    closed = asyncio.ensure_future(reader.read(1))
    nxt = None
    try:
        while True:
            nxt = asyncio.ensure_future(anext(lines))
            await asyncio.wait({nxt, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                return
            try:
                line = nxt.result()
            except StopAsyncIteration:
                return
            writer.write(json.dumps(line).encode() + b"\n")
            await writer.drain()
    finally:
        closed.cancel()
        if nxt is not None and not nxt.done():
            nxt.cancel()  # ends the generator inside its pending step
            await asyncio.wait({nxt})
        await lines.aclose()


def request(path: str, msg: dict, timeout: float = 5.0) -> dict:
    """Blocking request/reply, for fwctl. Raises ControlError if unreachable."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps(msg).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"daemon not running (no socket at {path})") from None
    except (socket.timeout, OSError) as e:
        raise ControlError(f"{path}: {e}") from None
    if not buf:
        raise ControlError(f"{path}: daemon closed the connection")
    return json.loads(buf)


async def arequest(path: str, msg: dict, timeout: float = 5.0) -> dict:
    """Asyncio request/reply, for daemon-to-daemon calls (syncd -> carpd)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=MAX_LINE), timeout)
    except (FileNotFoundError, ConnectionRefusedError, asyncio.TimeoutError) as e:
        raise ControlError(f"{path}: {e or 'timeout'}") from None
    try:
        writer.write(json.dumps(msg).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    if not line:
        raise ControlError(f"{path}: daemon closed the connection")
    return json.loads(line)


async def ask_reload(run_dir: str, target: str, sender: str) -> str | None:
    """Ask the other daemon to reload after our own (fwcluster.core.contract):
    None when it did, else why not. A daemon that does not run, or an older
    one that does not know the request, is not an error of ours."""
    try:
        reply = await arequest(socket_path(run_dir, target), contract.reload_request(sender))
    except (ControlError, OSError, ValueError) as e:
        return f"{target} not told to reload: {e}"
    return None if reply.get("ok") else f"{target} did not reload: {reply.get('error')}"
