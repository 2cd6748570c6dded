"""The config channel's framing (pure): authenticate before parsing.

An exchange on one TCP connection:

    server -> client   FWCC1 hello <challenge, 32 hex>\n
    client -> server   FWCC1 req <nonce, 32 hex> <length> <sha256 of body> <mac>\n  body
    server -> client   FWCC1 rep <length> <sha256 of body> <mac>\n  body

Header lines are fixed-format ASCII, at most MAX_HEADER bytes, parsed with a
regular expression, never as JSON. The MAC is HMAC-SHA256 over a direction
label, both random values, the length and the body's digest, so:

  * a receiver checks the MAC after reading at most MAX_HEADER bytes that
    are not yet authenticated, and only then reads the body (at most
    MAX_BODY bytes, the length it was promised) and checks its digest;
  * JSON is parsed only from authenticated bytes;
  * a reply cannot be reflected as a request (the labels differ) and no
    message can be replayed (the challenge and nonce are fresh per exchange).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re

VERSION = b"FWCC1"
MAX_HEADER = 256  # bytes of unauthenticated input per message
MAX_BODY = 8 << 20  # a 4 MiB bundle in base64 and JSON fits
_LABEL_REQUEST = b"fwcluster config request\0"
_LABEL_REPLY = b"fwcluster config reply\0"
_HELLO = re.compile(rb"FWCC1 hello ([0-9a-f]{32})\n")
_REQ = re.compile(rb"FWCC1 req ([0-9a-f]{32}) ([0-9]{1,9}) ([0-9a-f]{64}) ([0-9a-f]{64})\n")
_REP = re.compile(rb"FWCC1 rep ([0-9]{1,9}) ([0-9a-f]{64}) ([0-9a-f]{64})\n")


class FrameError(ValueError):
    """Input that is not a well-formed, authentic frame; `reason` is a counter name."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _mac(key: bytes, label: bytes, first: bytes, second: bytes, length: int, digest: bytes) -> bytes:
    msg = label + first + second + length.to_bytes(8, "big") + digest
    return hmac.new(key, msg, "sha256").hexdigest().encode()


def hello(challenge: bytes) -> bytes:
    return b"FWCC1 hello " + challenge.hex().encode() + b"\n"


def parse_hello(line: bytes) -> bytes:
    m = _HELLO.fullmatch(line)
    if not m:
        raise FrameError("malformed", "not a config channel greeting (another version?)")
    return bytes.fromhex(m.group(1).decode())


def request(key: bytes, challenge: bytes, nonce: bytes, body: bytes) -> bytes:
    digest = hashlib.sha256(body).digest()
    mac = _mac(key, _LABEL_REQUEST, challenge, nonce, len(body), digest)
    return b"FWCC1 req %s %d %s %s\n" % (nonce.hex().encode(), len(body), digest.hex().encode(), mac) + body


def reply(key: bytes, challenge: bytes, nonce: bytes, body: bytes) -> bytes:
    digest = hashlib.sha256(body).digest()
    mac = _mac(key, _LABEL_REPLY, nonce, challenge, len(body), digest)
    return b"FWCC1 rep %d %s %s\n" % (len(body), digest.hex().encode(), mac) + body


def _length(raw: bytes) -> int:
    n = int(raw)
    if n > MAX_BODY:
        raise FrameError("oversize", f"body of {n} bytes is larger than {MAX_BODY}")
    return n


def check_request(key: bytes, challenge: bytes, line: bytes) -> tuple[bytes, int, bytes]:
    """Authenticate a request header: (nonce, body length, body digest)."""
    m = _REQ.fullmatch(line)
    if not m:
        raise FrameError("malformed", "malformed request header")
    nonce, digest = bytes.fromhex(m.group(1).decode()), bytes.fromhex(m.group(3).decode())
    length = int(m.group(2))
    if not hmac.compare_digest(m.group(4), _mac(key, _LABEL_REQUEST, challenge, nonce, length, digest)):
        raise FrameError("auth_drops", "request failed authentication")
    return nonce, _length(m.group(2)), digest


def check_reply(key: bytes, challenge: bytes, nonce: bytes, line: bytes) -> tuple[int, bytes]:
    """Authenticate a reply header: (body length, body digest)."""
    m = _REP.fullmatch(line)
    if not m:
        raise FrameError("malformed", "malformed reply header")
    digest, length = bytes.fromhex(m.group(2).decode()), int(m.group(1))
    if not hmac.compare_digest(m.group(3), _mac(key, _LABEL_REPLY, nonce, challenge, length, digest)):
        raise FrameError("auth_drops", "reply failed authentication")
    return _length(m.group(1)), digest


def open_body(body: bytes, digest: bytes) -> dict:
    """The JSON object of an authenticated body (its digest was MACed)."""
    if not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
        raise FrameError("auth_drops", "body does not match its authenticated digest")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise FrameError("malformed", "body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise FrameError("malformed", "body is not a JSON object")
    return obj
