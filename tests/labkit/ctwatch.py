"""Watch one flow's conntrack entry on one member: its remaining timeout,
sampled from `conntrack -L` in the member's namespace, so a test can show
what became of a copy (timed out, or re-armed by someone) while it watched
the flow itself from the client."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.labkit.lab import Lab

SLACK = 2.0    # conntrack shows whole seconds, and a sample takes a moment to run


class CopyWatch:
    """Samples `conntrack -L <match>` on member every `interval` seconds from
    a thread, for at most `duration` seconds: (time.monotonic(), remaining
    timeout in s, or None when there is no such entry)."""

    def __init__(self, lab: "Lab", member: str, match: list[str], interval: float = 1.0,
                 duration: float = 300.0):
        self.lab, self.member, self.match = lab, member, match
        self.interval, self.duration = interval, duration
        self.samples: list[tuple[float, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"ctwatch-{member}", daemon=True)

    def timeout_now(self) -> int | None:
        out = self.lab.run(self.member, ["conntrack", "-L", *self.match], check=False).stdout
        lines = [ln.split() for ln in out.splitlines() if ln[:1].isalpha()]
        # "udp      17 38 src=..."; "icmp     1 29 src=...": the third field
        return int(lines[0][2]) if lines else None

    def _loop(self) -> None:
        end = time.monotonic() + self.duration
        while not self._stop.is_set() and time.monotonic() < end:
            t = time.monotonic()
            self.samples.append((t, self.timeout_now()))
            self._stop.wait(max(0.0, t + self.interval - time.monotonic()))

    def start(self) -> "CopyWatch":
        self._thread.start()
        return self

    def stop(self) -> "CopyWatch":
        self._stop.set()
        self._thread.join(10)
        return self

    def fate(self) -> tuple[str, float] | None:
        """What ended the countdown of the copy seen first: ("gone", t) when
        the entry had disappeared at t, ("re-armed", t) when at t it had
        more time left than that countdown allowed (someone re-sent or
        re-created it); None if it just counted down while watched."""
        seen = [(t, left) for t, left in self.samples if left is not None]
        if not seen:
            return None
        t0, left0 = seen[0]
        expiry = t0 + left0
        for t, left in self.samples:
            if t <= t0:
                continue
            if left is None:
                return "gone", t
            if t + left > expiry + SLACK:
                return "re-armed", t
            # Re-sent with less time left than it had (a replica's grace
            # differs from the first copy's timeout): follow that countdown.
            expiry = min(expiry, t + left)
        return None

    def describe(self, since: float) -> str:
        """The samples, times relative to `since`, for a failure message."""
        return ", ".join(f"{t - since:.0f}s:{'-' if left is None else left}"
                         for t, left in self.samples)
