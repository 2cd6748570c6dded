"""Prometheus text exposition for carpd and syncd.

Pure rendering (families -> text) plus two thin outputs: a localhost HTTP
endpoint (off unless [metrics] listen is set) and a node-exporter textfile
(off unless [metrics] textfile_dir is set), written atomically so the
collector never reads half a file.
"""
from __future__ import annotations

import asyncio
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterable


@dataclass
class Family:
    name: str
    type: str  # "gauge" | "counter"
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> "Family":
        self.samples.append((labels, value))
        return self


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"  # the exposition format's spelling
    return repr(v)


def render(families: Iterable[Family]) -> str:
    lines = []
    for f in families:
        lines.append(f"# HELP {f.name} {f.help}")
        lines.append(f"# TYPE {f.name} {f.type}")
        for labels, value in f.samples:
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{f.name}{{{lab}}} {_number(value)}" if lab else f"{f.name} {_number(value)}")
    return "\n".join(lines) + "\n"


# Both daemons serve on the host of [metrics] listen: carpd on its port,
# syncd on the next one, so one setting places both endpoints.
PORT_OFFSETS = {"carpd": 0, "syncd": 1}


def listen_for(listen: str, daemon: str) -> str:
    """The host:port a daemon serves metrics on, from [metrics] listen.
    ValueError when the daemon's port would be out of range."""
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
    """Atomically replace {directory}/{name}.prom."""
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    path = os.path.join(directory, f"{name}.prom")
    os.replace(tmp, path)
    return path


async def serve(listen: str, collect: Callable[[], str]) -> asyncio.AbstractServer:
    """Minimal HTTP/1.0 server answering GET /metrics with collect()."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            parts = request.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
                body, status = collect().encode(), b"200 OK"
                ctype = b"text/plain; version=0.0.4; charset=utf-8"
            else:
                body, status, ctype = b"see /metrics\n", b"404 Not Found", b"text/plain"
            writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Type: " + ctype +
                         b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, int(port))
