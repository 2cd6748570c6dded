"""What a member hands over when it stops forwarding flows (a Yield of the
core: maintenance, a drill, a preempting peer, a lost link).

The default filter replicates a UDP flow only once conntrack assures it,
2 s after its first packet with traffic both ways. A flow younger than
that has no copy on the peers; where the far end pushes to the LAN (a
stream, a game server) the new owner drops its next packet as a new flow
from outside, and the client does not know it must ask again. So the old
owner reads its table once at once (a dump on a socket of its own, not
paced) and sends every such young entry of the flows it gave up, marked
assured (policy.young_session), as live records: the new owner applies
them like the last events of the old one. A member that dies cannot do
this: docs/sync.md says what is lost then.
"""
from __future__ import annotations

import asyncio
import logging

from syncd.core import wire
from syncd.core.digest import record_key
from syncd.core.entry import IPS_ASSURED, OP_UPSERT
from syncd.core.ownership import Forwarding, handed_over
from syncd.core.policy import young_session
from syncd.dumps import Host, PacedDump

log = logging.getLogger("syncd")


class Handover:
    def __init__(self, host: Host, turn: int):
        self.host, self.turn = host, turn
        self.dump: PacedDump | None = None
        self.was: Forwarding | None = None    # what the member forwarded before the yield(s)
        self.found = 0                        # young entries sent by the running dump
        self.sent = 0                         # all runs

    def start(self, was: Forwarding) -> None:
        """Answer a Yield action. A second yield while the dump runs (one
        group after another) widens what it looks for and reads again."""
        h = self.host
        if not h.sync_filter.sessions:
            return                  # states = "all": every entry is on the peers already
        if self.dump is not None and self.dump.running and self.was is not None \
                and (self.was.mode, self.was.buckets) == (was.mode, was.buckets):
            was = Forwarding(was.mode, was.buckets, was.owned | self.was.owned)
        self.was, self.found = was, 0
        if self.dump is None:
            self.dump = PacedDump(asyncio.get_running_loop(), self._piece, self._end,
                                  self.turn, paced=False)
        self.dump.start()

    def _piece(self, entries: list) -> None:
        h = self.host
        own, flt, was, now_fwd = h.own, h.sync_filter, self.was, h.sync.forwarding
        records = []
        for e in entries:
            if not young_session(e, own, flt):
                continue
            rec = wire.encode_record(OP_UPSERT, e._replace(status=e.status | IPS_ASSURED))
            if handed_over(record_key(rec), rec, was, now_fwd):
                records.append(rec)
        if records:
            now = h.now()
            h.sync.local_records(records, now)
            h.sync.flush(now, delay_acks=True)
            h.process()
            self.found += len(records)
            self.sent += len(records)

    def _end(self, error: str | None) -> None:
        if error is not None:
            log.warning("handover: %s (%d young flows sent)", error, self.found)
        elif self.found:
            log.info("handover: %d young flows (not assured yet) sent to the new owner", self.found)

    def close(self) -> None:
        if self.dump is not None:
            self.dump.close()
            self.dump = None
