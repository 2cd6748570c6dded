"""The config channel's versions (fwcluster.core.configwire, issue 23): the
greeting stays FWCC1's, a request and its reply are FWCC1 or FWCC2, each
version MACed under labels of its own, and a member that speaks only FWCC1
(the previous release, or a build capped to it) finds an FWCC2 request
malformed, as the previous release did."""
from __future__ import annotations

import hashlib
import os

import pytest

from fwcluster.core import configwire as wire
from fwcluster.core import versions

KEY = hashlib.sha256(b"config key").digest()
CHALLENGE, NONCE = os.urandom(16), os.urandom(16)
RELEASE = {"version": "0.2.0", "speaks": {"config": [1, 2], "sync": [2, 2]}}


def test_the_range_is_the_one_versions_publishes():
    assert wire.SPEAKS == versions.SPEAKS["config"] == (1, 2)
    assert versions.speaks("config", "previous") == (1, 1)


def test_the_greeting_is_what_an_fwcc1_client_fullmatches():
    import re
    line = wire.hello(CHALLENGE)
    # the previous release's client: re.fullmatch of exactly this
    assert re.fullmatch(rb"FWCC1 hello ([0-9a-f]{32})\n", line)


@pytest.mark.parametrize("version", [1, 2])
def test_a_request_and_its_reply_round_trip_in_each_version(version):
    body = wire.canonical({"op": "hello", "from": "fw2", "body": {}, "release": RELEASE})
    pkt = wire.request(KEY, CHALLENGE, NONCE, body, version)
    assert pkt.startswith(b"FWCC%d req " % version)
    line, rest = pkt.split(b"\n", 1)
    got, nonce, length, digest = wire.check_request(KEY, CHALLENGE, line + b"\n")
    assert (got, nonce, length) == (version, NONCE, len(body))
    assert wire.release_of(wire.open_body(rest, digest)) == RELEASE
    rep = wire.reply(KEY, CHALLENGE, NONCE, b"{}", version)
    assert wire.check_reply(KEY, CHALLENGE, NONCE, rep[:-2], version) == (2, hashlib.sha256(b"{}").digest())


def test_an_fwcc1_only_member_finds_fwcc2_malformed():
    line = wire.request(KEY, CHALLENGE, NONCE, b"{}", 2).split(b"\n", 1)[0] + b"\n"
    with pytest.raises(wire.FrameError) as e:
        wire.check_request(KEY, CHALLENGE, line, speaks=(1, 1))
    assert e.value.reason == "malformed"


@pytest.mark.parametrize("frm, to", [(1, 2), (2, 1)])
def test_a_header_relabelled_to_the_other_version_fails_authentication(frm, to):
    line = wire.request(KEY, CHALLENGE, NONCE, b"{}", frm).split(b"\n", 1)[0] + b"\n"
    with pytest.raises(wire.FrameError) as e:
        wire.check_request(KEY, CHALLENGE, line.replace(b"FWCC%d" % frm, b"FWCC%d" % to, 1))
    assert e.value.reason == "auth_drops"
    rep = wire.reply(KEY, CHALLENGE, NONCE, b"{}", frm)[:-2]
    with pytest.raises(wire.FrameError) as e:   # a reply in another version than asked
        wire.check_reply(KEY, CHALLENGE, NONCE, rep, to)
    assert e.value.reason == "malformed"


@pytest.mark.parametrize("release", [None, "0.2.0", {"version": 2, "speaks": {}},
                                     {"version": "x", "speaks": []}])
def test_a_body_without_a_well_formed_release_says_none(release):
    assert wire.release_of({"release": release}) is None


def test_release_keeps_only_well_formed_ranges():
    got = wire.release_of({"release": {"version": "0.2.0",
                                       "speaks": {"config": [1, 2], "sync": [2], "x": ["1", 2],
                                                  "carp_hardened": [4, True]}}})
    assert got == {"version": "0.2.0", "speaks": {"config": [1, 2]}}
