"""The sync benchmark's probes (bench/ctprobe.py) on the real kernel: the
injector's batches land in the table (create, update, delete), and the
watcher sees each change as the right kind with the right key and mark. A
probe that missed or misread events would make every lag figure wrong."""
from __future__ import annotations

import os
import select
import subprocess
import time

import pytest

from bench.ctprobe import Injector, Watcher, run_injector
from bench.sync import UPDATE_MARK, entry, key_of
from tests.labkit.netns import in_netns

COUNT, DPORT = 600, 20999          # more than two injector batches


@pytest.fixture
def netns():
    name = f"h4pr{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def table(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-C"],
                         capture_output=True, text=True).stdout.strip()
    return int(out or 0)


def watch_all(w: Watcher, phase: str, timeout: float = 10) -> dict:
    seen, deadline = {}, time.monotonic() + timeout
    while len(seen) < COUNT and time.monotonic() < deadline:
        select.select([w], [], [], 0.2)
        while (got := w.read()) is not None:
            for kind, src, sport, dport, mark in got[1]:
                if kind == phase and dport == DPORT:
                    seen[(src, sport, dport)] = mark
    return seen


def test_injected_changes_are_seen_once_each_with_their_key_and_mark(netns):
    watcher = in_netns(netns, Watcher)
    entries = {phase: [entry(i, DPORT, UPDATE_MARK if phase != "new" else 0) for i in range(COUNT)]
               for phase in ("new", "update", "destroy")}
    keys = {key_of(i, DPORT) for i in range(COUNT)}

    for phase, want_count in (("new", COUNT), ("update", COUNT), ("destroy", 0)):
        out = in_netns(netns, lambda: run_injector(phase, entries[phase], rate=0))
        assert out["failed"] == 0 and len(out["times"]) == COUNT and all(out["times"])
        seen = watch_all(watcher, phase)
        assert set(seen) == keys
        if phase == "update":
            assert set(seen.values()) == {UPDATE_MARK}
        assert table(netns) == want_count


def test_a_refused_request_is_counted(netns):
    dup = [entry(0, DPORT)] * 3                      # created once, then EEXIST twice
    inj = in_netns(netns, lambda: Injector("new", dup))
    in_netns(netns, lambda: inj.send(0, 3))
    assert inj.failed == 2 and table(netns) == 1
