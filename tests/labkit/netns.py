"""Code and ip(8) batches inside a network namespace."""
from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from typing import Callable

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


class LabError(RuntimeError):
    pass


def in_netns(name: str, fn: Callable):
    """Run fn() in a fresh thread that has joined network namespace `name`
    (setns moves only the calling thread; sockets made there keep their
    namespace for life and can be used from any thread)."""
    result: dict = {}

    def body():
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {name}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    t = threading.Thread(target=body, name=f"netns-{name}")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def ip_batch(ns: str | None, commands: list[str]) -> None:
    if not commands:
        return
    argv = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
    cp = subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True, text=True,
                        timeout=30)
    if cp.returncode != 0:
        raise LabError(f"ip {'-n ' + ns if ns else ''} -batch failed: {cp.stderr.strip()[-500:]}")
