"""Sliding replay window over 64-bit message sequence numbers (pure)."""
from __future__ import annotations


class ReplayWindow:
    """Accepts each sequence number at most once; numbers more than `size`
    below the highest seen are refused (too old to tell)."""

    def __init__(self, size: int = 1024):
        self.size = size
        self.top = 0      # highest accepted seq (0: none yet)
        self.bits = 0     # bit i set: seq top - i was accepted

    def check_and_mark(self, seq: int) -> bool:
        if seq <= 0:
            return False
        if seq > self.top:
            shift = seq - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = seq
            return True
        offset = self.top - seq
        if offset >= self.size or self.bits >> offset & 1:
            return False
        self.bits |= 1 << offset
        return True
