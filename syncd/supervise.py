"""Let it crash: syncd's long-lived tasks and loop callbacks are supervised.

A task that ends (by an exception, or by returning: they are loops) or a
reader callback that raises leaves a process that looks alive but no longer
syncs (issue 9 #8: a dead ticker sends no ALIVEs and no resends while
in_sync stays true). Any such failure ends the daemon with status 1 and one
log line; systemd restarts it (Restart=on-failure) and the restarted run
resynchronises from scratch. SIGTERM/SIGINT stop cleanly; SIGHUP calls
on_hangup (syncd: live reload, syncd/reload.py).
"""
from __future__ import annotations

import asyncio
import logging
import signal
import traceback

EXIT_FAILURE = 1


def _where(exc: BaseException | None) -> str:
    if exc is None or exc.__traceback__ is None:
        return ""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f" at {frame.filename}:{frame.lineno} in {frame.name}"


class Supervisor:
    def __init__(self, log: logging.Logger):
        self.log = log
        self.stopping = asyncio.Event()
        self.failure: str | None = None
        self.on_hangup = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_exception_handler(self._loop_error)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._hangup)

    def start(self, coro, name: str) -> asyncio.Task:
        """A long-lived task: its end, whatever the cause, ends the daemon."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        return task

    def fail(self, what: str, exc: BaseException | None = None) -> None:
        if self.failure is None:   # the first failure is the cause; one line
            self.failure = f"{what}: {exc!r}{_where(exc)}" if exc else what
            self.log.error("%s; exiting (status %d) to be restarted", self.failure, EXIT_FAILURE)
        self.stopping.set()

    @property
    def exit_status(self) -> int:
        return EXIT_FAILURE if self.failure else 0

    def _task_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or self.stopping.is_set():
            return
        self.fail(f"task {task.get_name()} failed" if task.exception() else
                  f"task {task.get_name()} ended", task.exception())

    def _loop_error(self, loop, context: dict) -> None:
        self.fail(context.get("message", "event loop error"), context.get("exception"))

    def _hangup(self) -> None:
        if self.on_hangup is None:
            self.log.info("SIGHUP ignored: no live reload")
        else:
            self.on_hangup()
