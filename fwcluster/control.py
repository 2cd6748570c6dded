"""Local control channel: JSON lines over a unix socket.

carpd listens on {run_dir}/carpd.sock, syncd on {run_dir}/syncd.sock. A
request is one JSON object with a "cmd" key; the reply is one JSON object
with "ok" (bool) and either the result fields or "error". fwctl uses the
blocking client; the daemons use the asyncio server.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Awaitable, Callable

Handler = Callable[[dict], Awaitable[dict]]
MAX_LINE = 1 << 20


class ControlError(Exception):
    pass


def socket_path(run_dir: str, daemon: str) -> str:
    return str(Path(run_dir) / f"{daemon}.sock")


async def serve(path: str, handler: Handler) -> asyncio.AbstractServer:
    """Serve requests on a unix socket (mode 0600: root-only control)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or "cmd" not in req:
                        raise ValueError("request must be an object with a 'cmd' key")
                    reply = await handler(req)
                except Exception as e:  # a bad request must never kill the daemon
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(client, path=path, limit=MAX_LINE)
    os.chmod(path, 0o600)
    return server


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
