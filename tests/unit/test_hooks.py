"""Role hooks and track scripts with real executables in tmp_path: the
runner's order, arguments, stdin, timeout and queue bound; a failing or slow
hook never holds the caller."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

from fwcluster.carp import hooks, tracking
from fwcluster.carp.core import hookevent
from fwcluster.core.config import Hooks, Track


def _exe(path, text):
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return path


def _event(old="BACKUP", new="MASTER"):
    return hookevent.event("edge", [2, 1], old, new, "master down", "fw1", 1.5)


def test_group_role_is_master_while_any_vip_is_here():
    assert hookevent.group_role(["BACKUP", "MASTER"]) == "MASTER"
    assert hookevent.group_role(["BACKUP", "INIT"]) == "BACKUP"
    assert hookevent.group_role(["INIT", "INIT"]) == "INIT"
    assert hookevent.group_role([]) == "INIT"


def test_hooks_run_in_lexical_order_with_arguments_and_json(tmp_path):
    out = tmp_path / "out"
    d = tmp_path / "role.d"
    d.mkdir()
    for name in ("20-second", "10-first"):
        _exe(d / name, f'echo "{name} $*" >> {out}\ncat >> {out}\n')
    _exe(d / ".hidden", f"echo hidden >> {out}\n")
    _exe(d / "30-old~", f"echo backup >> {out}\n")
    (d / "40-not-executable").write_text(f"#!/bin/sh\necho no >> {out}\n")

    async def go():
        r = hooks.HookRunner(lambda: Hooks(str(d), 5))
        task = asyncio.create_task(r.run())
        r.transition(_event())
        await r.drain(5)
        task.cancel()
        return r
    r = asyncio.run(go())
    lines = out.read_text().splitlines()
    assert lines[0] == "10-first edge BACKUP MASTER master down"
    assert json.loads(lines[1]) == {"group": "edge", "vhids": [1, 2], "old": "BACKUP", "new": "MASTER",
                                    "reason": "master down", "node": "fw1", "time": 1.5}
    assert lines[2] == "20-second edge BACKUP MASTER master down"
    assert len(lines) == 4 and r.runs == 2 and r.failures == 0


def test_a_hanging_hook_is_killed_and_never_holds_the_transition(tmp_path, caplog):
    d = tmp_path / "role.d"
    d.mkdir()
    _exe(d / "10-hang", "echo starting\nexec sleep 30\n")
    _exe(d / "20-fails", "echo oops >&2\nexit 3\n")

    async def go():
        r = hooks.HookRunner(lambda: Hooks(str(d), 1))
        task = asyncio.create_task(r.run())
        t0 = time.monotonic()
        r.transition(_event())
        queued = time.monotonic() - t0
        await r.drain(5)
        task.cancel()
        return r, queued, time.monotonic() - t0
    with caplog.at_level(logging.INFO, logger="carpd.hooks"):
        r, queued, took = asyncio.run(go())
    assert queued < 0.05, "transition() must only queue"
    assert 1.0 <= took < 3.0, took  # the hang cut at its 1 s timeout, then the second hook
    assert r.failures == 2
    text = caplog.text
    assert "killed after 1 s" in text and "hook 20-fails: oops" in text and "exit status 3" in text


def test_the_queue_is_bounded_and_keeps_the_latest(tmp_path):
    d = tmp_path / "role.d"
    d.mkdir()
    out = tmp_path / "out"
    _exe(d / "10-log", f'echo "$3" >> {out}\n')

    async def go():
        r = hooks.HookRunner(lambda: Hooks(str(d), 5))
        for i in range(hooks.QUEUE_BOUND + 5):
            r.transition(_event(new=f"R{i}"))
        task = asyncio.create_task(r.run())
        await r.drain(20)
        task.cancel()
        return r
    r = asyncio.run(go())
    seen = out.read_text().split()
    assert r.dropped == 5 and len(seen) == hooks.QUEUE_BOUND
    assert seen[-1] == f"R{hooks.QUEUE_BOUND + 4}" and seen[0] == "R5"


def test_a_missing_directory_has_no_hooks(tmp_path):
    assert hooks.hooks_in(str(tmp_path / "nope")) == []


def test_track_script_exit_status_timeout_and_user():
    def check(*cmd, **kw):
        t = Track("s", "script", command=cmd, timeout=0.5, **kw)
        return asyncio.run(tracking.check_script(t, None))
    assert check("/bin/sh", "-c", "id -un") == (True, "exit 0: nobody")
    assert check("/bin/sh", "-c", "id -un", user="root") == (True, "exit 0: root")
    assert check("/bin/sh", "-c", "exit 1") == (False, "exit 1")
    t0 = time.monotonic()
    assert check("/bin/sleep", "30") == (False, "killed after 0.5 s")
    assert time.monotonic() - t0 < 2


SHIPPED = Path(__file__).resolve().parents[2] / "overlays/cluster/usr/share/fwcluster/hooks"


def _run_shipped(tmp_path, name, tool, env=None):
    """A shipped example hook through the runner, its tool (logger,
    systemctl) a stub on PATH that records its arguments."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    _exe(bin_ / tool, f'echo "$@" >> {tmp_path / "calls"}\n')
    d = tmp_path / "role.d"
    d.mkdir()
    (d / name).write_bytes((SHIPPED / name).read_bytes())
    (d / name).chmod(0o755)
    old = dict(os.environ)
    os.environ.update({"PATH": f"{bin_}:{os.environ['PATH']}", **(env or {})})
    try:
        async def go():
            r = hooks.HookRunner(lambda: Hooks(str(d), 5))
            task = asyncio.create_task(r.run())
            r.transition(_event("BACKUP", "MASTER"))
            r.transition(_event("MASTER", "BACKUP"))
            await r.drain(10)
            task.cancel()
            return r
        r = asyncio.run(go())
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert r.failures == 0
    return (tmp_path / "calls").read_text().splitlines()


def test_shipped_service_hook_starts_on_master_and_stops_otherwise(tmp_path):
    calls = _run_shipped(tmp_path, "50-service-on-master", "systemctl", {"SERVICE": "pppd-wan.service"})
    assert calls == ["start --no-block pppd-wan.service", "stop --no-block pppd-wan.service"]


def test_shipped_log_hook_logs_each_change(tmp_path):
    calls = _run_shipped(tmp_path, "10-log-role", "logger")
    assert calls[0].startswith("-t fwcluster-role -p daemon.notice -- group edge: BACKUP -> MASTER "
                               "(master down) {")
    assert '"vhids": [1, 2]' in calls[0] and "MASTER -> BACKUP" in calls[1]
