"""The paced dump reader (syncd/dumps.py) on a fake loop and a fake dump
socket: a turn's entries go to the job, a routine dump pauses between
turns (the reader is off meanwhile), an abort stops every callback, an
error ends the dump once, and a failing start never calls back inside
start()."""
from __future__ import annotations

from syncd.conntrack import ConntrackError
from syncd.dumps import PacedDump


class Handle:
    def __init__(self, loop, delay, fn, args):
        self.loop, self.delay, self.fn, self.args = loop, delay, fn, args
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class FakeLoop:
    """What PacedDump uses of an asyncio loop; the test fires it by hand."""

    def __init__(self):
        self.readers: dict[int, object] = {}
        self.timers: list[Handle] = []

    def add_reader(self, fd, fn):
        assert fd not in self.readers, "registered twice"
        self.readers[fd] = fn

    def remove_reader(self, fd):
        self.readers.pop(fd)

    def call_later(self, delay, fn, *args):
        self.timers.append(Handle(self, delay, fn, args))
        return self.timers[-1]

    def call_soon(self, fn, *args):
        return self.call_later(0.0, fn, *args)

    def readable(self):
        for fn in list(self.readers.values()):
            fn()

    def fire_timers(self):
        due, self.timers = self.timers, []
        for h in due:
            if not h.cancelled:
                h.fn(*h.args)


class FakeDumper:
    """A table of `size` numbered entries, or an error after `fail_after`."""

    def __init__(self, size: int, fail_after: int | None = None, start_error=None):
        self.size, self.fail_after, self.start_error = size, fail_after, start_error
        self.pos, self.running, self.starts, self.closed = 0, False, 0, False

    def fileno(self):
        return 7

    def start(self):
        if self.start_error:
            raise self.start_error
        self.pos, self.running = 0, True
        self.starts += 1

    def read(self, limit):
        if self.fail_after is not None and self.pos >= self.fail_after:
            self.running = False
            raise ConntrackError("dump: EINTR")
        out = list(range(self.pos, min(self.pos + limit, self.size)))
        self.pos += len(out)
        self.running = self.pos < self.size
        return out, not self.running

    def close(self):
        self.closed = True


def reader(dumper, turn=4, paced=False):
    loop, pieces, ends = FakeLoop(), [], []
    dump = PacedDump(loop, pieces.append, ends.append, turn, paced, dumper=lambda: dumper)
    return loop, dump, pieces, ends


def test_an_unpaced_dump_reads_a_turn_per_wakeup_and_ends_once():
    loop, dump, pieces, ends = reader(FakeDumper(10))
    dump.start()
    for _ in range(3):
        loop.readable()
    assert pieces == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and ends == [None]
    assert not loop.readers and not dump.running and dump.turns == 3


def test_a_paced_dump_pauses_between_turns_with_the_reader_off():
    loop, dump, pieces, ends = reader(FakeDumper(6), paced=True)
    dump.start()
    loop.readable()
    assert pieces == [[0, 1, 2, 3]] and not loop.readers and len(loop.timers) == 1
    assert loop.timers[0].delay >= 0
    loop.fire_timers()                  # the pause is over: reading again
    assert loop.readers
    loop.readable()
    assert pieces[-1] == [4, 5] and ends == []      # the end too comes after a pause
    loop.fire_timers()
    assert ends == [None] and not loop.readers and not loop.timers


def test_an_abort_stops_reading_and_cancels_the_pending_resume():
    loop, dump, pieces, ends = reader(FakeDumper(12), paced=True)
    dump.start()
    loop.readable()
    dump.abort()
    loop.fire_timers()
    loop.readable()
    assert pieces == [[0, 1, 2, 3]] and ends == [] and not loop.readers


def test_a_job_that_aborts_inside_its_callback_gets_no_more():
    dumper = FakeDumper(8)
    loop, pieces = FakeLoop(), []
    dump = PacedDump(loop, lambda p: (pieces.append(p), dump.abort()), pieces.append, 4, False,
                     dumper=lambda: dumper)
    dump.start()
    loop.readable()
    loop.readable()
    assert pieces == [[0, 1, 2, 3]] and not loop.readers


def test_a_restart_abandons_the_running_dump():
    dumper = FakeDumper(10)
    loop, dump, pieces, ends = reader(dumper)
    dump.start()
    loop.readable()
    dump.start(turn=8)
    loop.readable()
    loop.readable()
    assert pieces == [[0, 1, 2, 3], list(range(8)), [8, 9]] and ends == [None]
    assert dumper.starts == 2


def test_an_error_ends_the_dump_once_with_its_reason():
    loop, dump, pieces, ends = reader(FakeDumper(10, fail_after=4))
    dump.start()
    loop.readable()
    loop.readable()
    assert pieces == [[0, 1, 2, 3]] and ends == ["dump: EINTR"] and not loop.readers
    loop.readable()
    assert ends == ["dump: EINTR"]


def test_a_start_that_fails_reports_from_the_loop_not_from_start():
    loop, dump, pieces, ends = reader(FakeDumper(10, start_error=OSError(105, "No buffer space")))
    dump.start()
    assert ends == [] and dump.running      # a job that restarts on errors cannot recurse
    loop.fire_timers()
    assert ends == ["dump: [Errno 105] No buffer space"] and not dump.running


def test_close_releases_the_socket():
    dumper = FakeDumper(10)
    loop, dump, _pieces, _ends = reader(dumper)
    dump.start()
    dump.close()
    assert dumper.closed and not loop.readers
