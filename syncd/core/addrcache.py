"""Address text <-> packed bytes through small caches (pure). A sync stream
and the conntrack table repeat the same few thousand addresses endlessly, and
parsing and formatting addresses cost far more than a dict lookup. The family follows from the
text (':' is IPv6) or the length (16 bytes is IPv6)."""
from __future__ import annotations

import ipaddress

CACHE_MAX = 65536
_packed: dict = {}
_text: dict = {}


def pton(addr: str) -> bytes:
    b = _packed.get(addr)
    if b is None:
        if len(_packed) >= CACHE_MAX:
            _packed.clear()
        b = _packed[addr] = ipaddress.ip_address(addr).packed
    return b


def ntop(raw: bytes) -> str:
    s = _text.get(raw)
    if s is None:
        if len(_text) >= CACHE_MAX:
            _text.clear()
        s = _text[raw] = str(ipaddress.ip_address(raw))
    return s
