"""The config channel's framing (pure): authenticate before parsing.

An exchange on one TCP connection:

    server -> client   FWCC1 hello <challenge, 32 hex>\n
    client -> server   FWCCn req <nonce, 32 hex> <length> <sha256 of body> <mac>\n  body
    server -> client   FWCCn rep <length> <sha256 of body> <mac>\n  body

n is the protocol version the client picked, 1 or 2 (issue 23). The
greeting stays FWCC1's: a client of the previous release (FWCC1) matches
it exactly. A server that speaks only FWCC1 takes a FWCC2 request for a
malformed one and closes the connection; the client then asks again on a
new connection at FWCC1 (negotiate: the newest both speak). FWCC2 has MAC
labels of its own (a header cannot be relabelled to the other version)
and its request and reply bodies carry the sender's "release" (version
and the protocol ranges it speaks): authenticated like the rest, so the
receiver of a push knows who pushed and the pusher can say what refused.

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

VERSION = b"FWCC2"
SPEAKS = (1, 2)  # the versions this module frames (FWCC1, FWCC2)
MAX_HEADER = 256  # bytes of unauthenticated input per message
MAX_BODY = 8 << 20  # a 4 MiB bundle in base64 and JSON fits
_LABELS = {  # version -> (request, reply) MAC labels
    1: (b"fwcluster config request\0", b"fwcluster config reply\0"),
    2: (b"fwcluster config request v2\0", b"fwcluster config reply v2\0"),
}
_LABEL_REQUEST, _LABEL_REPLY = _LABELS[1]
_HELLO = re.compile(rb"FWCC1 hello ([0-9a-f]{32})\n")
_REQ = re.compile(rb"FWCC([12]) req ([0-9a-f]{32}) ([0-9]{1,9}) ([0-9a-f]{64}) ([0-9a-f]{64})\n")
_REP = re.compile(rb"FWCC([12]) rep ([0-9]{1,9}) ([0-9a-f]{64}) ([0-9a-f]{64})\n")


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


def request(key: bytes, challenge: bytes, nonce: bytes, body: bytes, version: int = 1) -> bytes:
    digest = hashlib.sha256(body).digest()
    mac = _mac(key, _LABELS[version][0], challenge, nonce, len(body), digest)
    return b"FWCC%d req %s %d %s %s\n" % (version, nonce.hex().encode(), len(body),
                                          digest.hex().encode(), mac) + body


def reply(key: bytes, challenge: bytes, nonce: bytes, body: bytes, version: int = 1) -> bytes:
    digest = hashlib.sha256(body).digest()
    mac = _mac(key, _LABELS[version][1], nonce, challenge, len(body), digest)
    return b"FWCC%d rep %d %s %s\n" % (version, len(body), digest.hex().encode(), mac) + body


def _length(raw: bytes) -> int:
    n = int(raw)
    if n > MAX_BODY:
        raise FrameError("oversize", f"body of {n} bytes is larger than {MAX_BODY}")
    return n


def check_request(key: bytes, challenge: bytes, line: bytes,
                  speaks: tuple[int, int] = SPEAKS) -> tuple[int, bytes, int, bytes]:
    """Authenticate a request header: (version, nonce, body length, body
    digest). A version we do not speak is malformed, as FWCC1 found it."""
    m = _REQ.fullmatch(line)
    if not m or not speaks[0] <= int(m.group(1)) <= speaks[1]:
        raise FrameError("malformed", "malformed request header")
    version = int(m.group(1))
    nonce, digest = bytes.fromhex(m.group(2).decode()), bytes.fromhex(m.group(4).decode())
    length = int(m.group(3))
    if not hmac.compare_digest(m.group(5), _mac(key, _LABELS[version][0], challenge, nonce,
                                                length, digest)):
        raise FrameError("auth_drops", "request failed authentication")
    return version, nonce, _length(m.group(3)), digest


def check_reply(key: bytes, challenge: bytes, nonce: bytes, line: bytes,
                version: int = 1) -> tuple[int, bytes]:
    """Authenticate a reply header to a request of `version`: (body
    length, body digest)."""
    m = _REP.fullmatch(line)
    if not m or int(m.group(1)) != version:
        raise FrameError("malformed", "malformed reply header")
    digest, length = bytes.fromhex(m.group(3).decode()), int(m.group(2))
    if not hmac.compare_digest(m.group(4), _mac(key, _LABELS[version][1], nonce, challenge,
                                                length, digest)):
        raise FrameError("auth_drops", "reply failed authentication")
    return _length(m.group(2)), digest


def release_of(body: dict) -> dict | None:
    """The sender's release in an authenticated FWCC2 body ({"version",
    "speaks": {protocol: [oldest, newest]}}), None when it says none."""
    r = body.get("release")
    if not isinstance(r, dict) or not isinstance(r.get("version"), str) or \
            not isinstance(r.get("speaks"), dict):
        return None
    return {"version": r["version"], "speaks": {k: list(v) for k, v in r["speaks"].items()
                                                 if isinstance(k, str) and isinstance(v, list)
                                                 and len(v) == 2 and all(type(x) is int for x in v)}}


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
