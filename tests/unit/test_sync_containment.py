"""Which syncd errors are contained and which end it (syncd/supervise.py):
a control request that only reads, or a reload, is answered with the error
and counted; one that drives the Sync core ends syncd (status 1)."""
from __future__ import annotations

import asyncio
import logging

from syncd import reload as live_reload
from tests.unit.test_sync_carpd_link import daemon


def boom(*_a, **_k):
    raise RuntimeError("boom")


def handled(tmp_path, req: dict, patch) -> tuple[dict, object]:
    d = daemon(tmp_path)
    patch(d)

    async def go():
        d.sup.install(asyncio.get_running_loop())
        return await d.handle(req)
    return asyncio.run(go()), d


def test_a_raising_status_request_is_answered_counted_and_contained(tmp_path, caplog):
    def patch(d):
        d.status = boom
    with caplog.at_level(logging.ERROR, logger="syncd"):
        reply, d = handled(tmp_path, {"cmd": "status"}, patch)
    assert reply == {"ok": False, "error": "RuntimeError: boom"}
    assert not d.sup.stopping.is_set() and d.sup.exit_status == 0
    assert d.sup.contained == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "control request 'status' failed (contained" in lines[0]


def test_a_failed_reload_keeps_syncd_running(tmp_path, monkeypatch):
    monkeypatch.setattr(live_reload, "reload", boom)
    reply, d = handled(tmp_path, {"cmd": "reload"}, lambda d: None)
    assert reply["ok"] is False and not d.sup.stopping.is_set() and d.sup.contained == 1


def test_a_raising_core_call_ends_syncd(tmp_path):
    def patch(d):
        d.sync.resync = boom
    reply, d = handled(tmp_path, {"cmd": "resync-request"}, patch)
    assert reply["ok"] is False
    assert d.sup.stopping.is_set() and d.sup.exit_status == 1 and d.sup.contained == 0
