"""syncd wire format, HKDF and replay window (pure)."""
import hmac

import pytest

from syncd.core import keys, wire
from syncd.core.entry import OP_DELETE, OP_UPSERT, Entry
from syncd.core.replay import ReplayWindow

KEY = keys.sync_key(b"correct horse", "edge")

TCP4 = Entry(4, 6, 0, "192.0.2.100", "198.51.100.100", 40000, 80,
             "198.51.100.100", "198.51.100.1", 80, 61000, status=0x18e, timeout=431999,
             mark=7, tcp_state=3, wscale_orig=7, wscale_reply=7, flags_orig=0x23, flags_reply=0x33)
UDP6 = Entry(6, 17, 3, "2001:db8:1::100", "2001:db8:2::100", 5353, 53,
             "2001:db8:2::100", "2001:db8:1::100", 53, 5353, status=0xe, timeout=120)
ICMP4 = Entry(4, 1, 0, "192.0.2.100", "198.51.100.100", 77, 8 << 8,
              "198.51.100.100", "192.0.2.100", 77, 0, timeout=30)


def test_hkdf_rfc5869_case1():
    ikm = bytes([0x0b] * 22)
    salt = bytes(range(13))
    info = bytes(range(0xf0, 0xfa))
    prk = keys.hkdf_extract(salt, ikm)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = keys.hkdf_expand(prk, info, 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db0"
                         "2d56ecc4c5bf34007208d5b887185865")


def test_hkdf_rfc5869_case3_no_salt():
    okm = keys.hkdf(bytes([0x0b] * 22), b"", b"", 42)
    assert okm.hex() == ("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
                         "9d201395faa4b61a96c8")


def test_sync_key_depends_on_cluster_and_secret():
    assert keys.sync_key(b"s", "a") != keys.sync_key(b"s", "b")
    assert keys.sync_key(b"s", "a") != keys.sync_key(b"t", "a")
    assert len(KEY) == 32


def data_msg(records, seq=5, src=0, dst=1):
    body = b"".join(wire.encode_record(op, e) for op, e in records)
    m = wire.Message(wire.DATA, src, dst, 0xFEEDFACECAFEBEEF, 1234, seq, 2, 9, len(records))
    return wire.encode(KEY, m, body)


def test_roundtrip_all_families_and_fields():
    recs = [(OP_UPSERT, TCP4), (OP_UPSERT, UDP6), (OP_DELETE, ICMP4)]
    m = wire.decode(KEY, data_msg(recs))
    assert (m.type, m.src, m.dst, m.session, m.boot, m.seq, m.gen, m.dseq, m.arg) == (
        wire.DATA, 0, 1, 0xFEEDFACECAFEBEEF, 1234, 5, 2, 9, 3)
    assert list(m.records) == recs
    assert m.records[0][1].snat and not m.records[0][1].dnat


def test_control_message_roundtrip():
    data = wire.encode(KEY, wire.Message(wire.NACK, 1, 0, 7, 9, 2**40, 3, 10, 20))
    m = wire.decode(KEY, data)
    assert (m.type, m.seq, m.dseq, m.arg, m.records) == (wire.NACK, 2**40, 10, 20, ())


def test_every_counter_is_64_bit():
    """Version 1 packed gen, dseq and arg as u32: at 2**32 encode raised."""
    top = 2**64 - 1
    m = wire.decode(KEY, wire.encode(KEY, wire.Message(wire.ALIVE, 1, 0, top, top, top, top, top, top),
                                     wire.encode_about(wire.About("0.3.0"))))
    assert (m.session, m.boot, m.seq, m.gen, m.dseq, m.arg) == (top,) * 6


def test_version_1_datagrams_are_dropped_as_bad_version():
    v1 = b"FS\x01" + bytes(29) + bytes(32)      # a version 1 header and MAC
    with pytest.raises(wire.WireError) as e:
        wire.decode(KEY, v1 + bytes(24))
    assert e.value.reason == "bad_version"


def test_batch_fits_datagram():
    per = wire.REC_LEN[4]
    assert wire.HEADER.size == 56
    assert wire.MAX_BODY // per >= 25 and wire.MAX_BODY // wire.REC_LEN[6] >= 13


@pytest.mark.parametrize("mutate,reason", [
    (lambda d: d[:40], "truncated"),
    (lambda d: d[:-1], "bad_auth"),
    (lambda d: b"XX" + d[2:], "bad_magic"),
    (lambda d: d[:2] + b"\x01" + d[3:], "bad_version"),
    (lambda d: d[:60] + bytes([d[60] ^ 1]) + d[61:], "bad_auth"),
    (lambda d: d[:-32] + bytes(32), "bad_auth"),
])
def test_bad_datagrams_raise_with_reason(mutate, reason):
    d = data_msg([(OP_UPSERT, TCP4)])
    with pytest.raises(wire.WireError) as e:
        wire.decode(KEY, mutate(d))
    assert e.value.reason == reason


def test_mac_is_hmac_sha256():
    for key in (b"", KEY, bytes(range(64)), bytes(range(65)), b"k" * 200):
        for data in (b"", b"x", bytes(range(256)) * 6):
            assert wire.mac(key, data) == hmac.digest(key, data, "sha256"), (len(key), len(data))
    d = data_msg([(OP_UPSERT, TCP4)])
    assert d[-wire.MAC_LEN:] == hmac.digest(KEY, d[:-wire.MAC_LEN], "sha256")


def test_wrong_key_is_bad_auth():
    d = data_msg([(OP_UPSERT, TCP4)])
    with pytest.raises(wire.WireError) as e:
        wire.decode(keys.sync_key(b"other", "edge"), d)
    assert e.value.reason == "bad_auth"


def test_signed_but_malformed_bodies():
    # Valid MAC, but the body lies: must still be a clean drop, not a crash.
    rec = wire.encode_record(OP_UPSERT, TCP4)
    cases = [
        (wire.Message(wire.DATA, 0, 1, 1, 1, 1, 1, 1, 2), rec, "truncated"),      # count too high
        (wire.Message(wire.DATA, 0, 1, 1, 1, 1, 1, 1, 0), rec, "malformed"),      # trailing bytes
        (wire.Message(wire.DATA, 0, 1, 1, 1, 1, 1, 1, 1), b"\x09" + rec[1:], "malformed"),  # bad op
        (wire.Message(wire.DATA, 0, 1, 1, 1, 1, 1, 1, 1), rec[:1] + b"\x05" + rec[2:], "malformed"),
        (wire.Message(99, 0, 1, 1, 1, 1, 1, 1, 0), b"", "bad_type"),
        (wire.Message(wire.ACK, 0, 1, 1, 1, 1, 1, 1, 0), b"x", "malformed"),
    ]
    for m, body, reason in cases:
        with pytest.raises(wire.WireError) as e:
            wire.decode(KEY, wire.encode(KEY, m, body))
        assert e.value.reason == reason, (m, reason)


def test_replay_window():
    w = ReplayWindow(size=64)
    assert w.check_and_mark(5)
    assert not w.check_and_mark(5)
    assert w.check_and_mark(3)            # late but new
    assert not w.check_and_mark(3)
    assert w.check_and_mark(100)
    assert not w.check_and_mark(36)       # 64 below the top: too old
    assert w.check_and_mark(37)
    assert not w.check_and_mark(0)
    assert w.check_and_mark(100 + 1000)   # big jump clears the window
    assert not w.check_and_mark(100)


def test_the_helper_rides_in_the_old_pad_field():
    """A record's helper (by code) sits where releases before it sent a pad
    of 0 and ignored it: a record without a helper is byte for byte the old
    one, and a previous release reads one with a helper as the same entry."""
    from syncd.core.entry import HELPERS
    plain = wire.encode_record(OP_UPSERT, TCP4)
    assert plain[6:8] == b"\0\0"
    ftp = wire.encode_record(OP_UPSERT, TCP4._replace(helper="ftp"))
    assert ftp[6:8] == HELPERS.index("ftp").to_bytes(2, "big") and ftp[:6] + ftp[8:] == plain[:6] + plain[8:]
    assert wire.decode_record(ftp, 0)[1].helper == "ftp"
    newer = ftp[:6] + len(HELPERS).to_bytes(2, "big") + ftp[8:]   # a helper of a newer release
    assert wire.decode_record(newer, 0)[1] == TCP4
    assert wire.encode_record(OP_UPSERT, TCP4._replace(helper="unknown")) == plain
