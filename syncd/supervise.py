"""syncd's long-lived tasks and loop callbacks are supervised; an error is
either contained or fatal, by where it happened.

Fatal (status 1, one log line; systemd restarts syncd, Restart=on-failure):
an error that may leave the Sync core or syncd's view of the kernel table
inconsistent: inside Sync.* calls, the readers on_events / on_datagrams /
on_dump, apply, the ticker and the carpd link, a control request that
drives the core (resync, refresh, resync-request, anti-entropy), and a
long-lived task that ends. Carrying on there would leave a process that
looks alive but no longer syncs (issue 9 #8: a dead ticker sends no ALIVEs
and no resends while in_sync stays true). A restart costs little: the
kernel table stays, and a member that carries traffic is not demoted while
the new run resyncs (contract.sync_demotion).

Contained (one log line naming the place, counted in status as
counters.callback_errors, fwcluster_sync_callback_errors_total): an error
in work that only reads state or talks to one client: a control request
that reads (status, metrics, conntrack, config), the metrics textfile,
housekeeping's address and table-size refreshes, one connection of the
config channel, and a reload (the old config keeps running). Ending syncd
for those would turn one bad request into a restart, and a restart of the
master's syncd used to move every vip twice.

SIGTERM/SIGINT stop cleanly; SIGHUP calls on_hangup (syncd: live reload,
syncd/reload.py).
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
        self.contained = 0      # callback_errors: contained errors so far

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

    def contain(self, where: str, exc: BaseException) -> None:
        """An error in work that cannot corrupt syncd's state: one line, counted."""
        self.contained += 1
        self.log.error("%s failed (contained, carrying on): %r%s", where, exc, _where(exc))

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
