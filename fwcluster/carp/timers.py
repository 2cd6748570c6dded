"""Driving one CARP machine from asyncio: its event in, its one timer moved
by ArmTimer, the rest of its actions handed on. Vip and bucket machines
both run this way."""
from __future__ import annotations

import asyncio

from fwcluster.carp.core import machine


def rearm(run, at: float | None, callback, *args) -> None:
    """Replace run.timer with one firing callback(*args) at loop time `at`
    (None: no timer)."""
    if run.timer is not None:
        run.timer.cancel()
        run.timer = None
    if at is not None:
        run.timer = asyncio.get_running_loop().call_at(at, callback, *args)


def step(run, vhid: int, event, fire, role_changed, act) -> None:
    """Feed event to run.machine at the loop's time. ArmTimer moves run.timer
    (fire(vhid, at) when due), RoleChanged goes to role_changed(run, change),
    every other action to act(action)."""
    for action in run.machine.handle(event, asyncio.get_running_loop().time()):
        if isinstance(action, machine.ArmTimer):
            rearm(run, action.at, fire, vhid, action.at)
        elif isinstance(action, machine.RoleChanged):
            role_changed(run, action)
        else:
            act(action)
