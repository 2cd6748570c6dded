"""The shipped systemd units of the two daemons: real-time scheduling with
carpd above syncd (an advert must never wait behind a sync burst), and
children of either reset to normal scheduling."""
from __future__ import annotations

from pathlib import Path

UNITS = Path(__file__).resolve().parents[2] / "overlays/cluster/usr/lib/systemd/system"


def service(name: str) -> dict:
    text = (UNITS / f"fwcluster-{name}.service").read_text()
    return dict(line.split("=", 1) for line in text.splitlines()
                if "=" in line and not line.startswith("#"))


def test_both_daemons_run_real_time_with_carpd_first():
    carpd, syncd = service("carpd"), service("syncd")
    for unit in (carpd, syncd):
        assert unit["CPUSchedulingPolicy"] == "rr"
        assert unit["CPUSchedulingResetOnFork"] == "yes"
        # below the threaded IRQ handlers of PREEMPT_RT kernels (50)
        assert 1 <= int(unit["CPUSchedulingPriority"]) < 50
    assert int(carpd["CPUSchedulingPriority"]) > int(syncd["CPUSchedulingPriority"])
