"""Child processes of carpd (track scripts, role hooks): bounded in time and
output, never a shell, never able to outlive their timeout."""
from __future__ import annotations

import asyncio
import os
import signal

OUTPUT_LIMIT = 4096  # bytes of a child's output kept (and logged)


async def run_bounded(argv, timeout: float, user: str | None, stdin: bytes | None = None,
                      env: dict | None = None) -> tuple[int | None, bytes]:
    """A program with no shell, in a session of its own, stdout and stderr
    together; killed (its whole process group) after `timeout` seconds.
    Returns (exit status or None when killed, the first OUTPUT_LIMIT bytes)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True, cwd="/", user=user, env=env)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
        return proc.returncode, out[:OUTPUT_LIMIT]
    except asyncio.TimeoutError:
        return None, b""
    finally:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
