"""rtnetlink address requests of a takeover, and the acks read back."""
import ipaddress
import struct

from fwcluster.carp.core import addrmsg as a


def attrs(body: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 4 <= len(body):
        length, kind = struct.unpack_from("=HH", body, pos)
        out[kind] = body[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return out


def test_ipv4_add_request():
    msg = a.encode(a.AddrChange(True, 7, ipaddress.ip_interface("192.0.2.1/24")), seq=42)
    length, kind, flags, seq, port = a.NLMSGHDR.unpack_from(msg)
    assert (length, kind, seq, port) == (len(msg), a.RTM_NEWADDR, 42, 0)
    assert flags == a.NLM_F_REQUEST | a.NLM_F_ACK | a.NLM_F_CREATE | a.NLM_F_EXCL
    family, prefixlen, ifa_flags, scope, index = a.IFADDRMSG.unpack_from(msg, 16)
    assert (family, prefixlen, ifa_flags, scope, index) == (a.AF_INET, 24, 0, 0, 7)
    got = attrs(msg[24:])
    assert got == {a.IFA_LOCAL: bytes([192, 0, 2, 1]), a.IFA_ADDRESS: bytes([192, 0, 2, 1])}


def test_vip_without_prefix_route_and_link_up_down():
    vip = ipaddress.ip_interface("192.0.2.1/24")
    add = a.encode(a.AddrChange(True, 5, vip, noprefixroute=True), seq=1)
    assert a.IFADDRMSG.unpack_from(add, 16)[:3] == (a.AF_INET, 24, 0)  # the u8 field cannot hold it
    assert struct.unpack("=I", attrs(add[24:])[a.IFA_FLAGS])[0] == a.IFA_F_NOPREFIXROUTE
    for up in (True, False):
        msg = a.encode(a.LinkChange(up, 9), seq=3)
        length, kind, flags, seq, _ = a.NLMSGHDR.unpack_from(msg)
        assert (length, kind, flags, seq) == (len(msg), a.RTM_NEWLINK, a.NLM_F_REQUEST | a.NLM_F_ACK, 3)
        assert a.IFINFOMSG.unpack_from(msg, 16) == (0, 0, 9, a.IFF_UP if up else 0, a.IFF_UP)


def test_ipv6_add_skips_dad_and_delete_does_not_ask_for_it():
    vip = ipaddress.ip_interface("2001:db8:1::1/64")
    add = a.encode(a.AddrChange(True, 3, vip), seq=1)
    assert a.IFADDRMSG.unpack_from(add, 16)[:3] == (a.AF_INET6, 64, a.IFA_F_NODAD)
    got = attrs(add[24:])
    assert got[a.IFA_ADDRESS] == vip.ip.packed
    assert struct.unpack("=I", got[a.IFA_FLAGS])[0] == a.IFA_F_NODAD
    rm = a.encode(a.AddrChange(False, 3, vip), seq=2)
    _, kind, flags, _, _ = a.NLMSGHDR.unpack_from(rm)
    assert (kind, flags) == (a.RTM_DELADDR, a.NLM_F_REQUEST | a.NLM_F_ACK)
    assert a.IFA_FLAGS not in attrs(rm[24:])


def test_batch_keeps_order_and_numbers_in_sequence():
    changes = [a.AddrChange(True, 2, ipaddress.ip_interface(v))
               for v in ("192.0.2.1/24", "198.51.100.1/24", "2001:db8:2::1/64")]
    data, pos, seqs = a.encode_batch(changes, 10), 0, []
    while pos < len(data):
        length, _, _, seq, _ = a.NLMSGHDR.unpack_from(data, pos)
        seqs.append(seq)
        pos += length
    assert pos == len(data) and seqs == [10, 11, 12]


def ack(seq: int, error: int) -> bytes:
    return a.NLMSGHDR.pack(16 + 4 + 16, a.NLMSG_ERROR, 0, seq, 1) + struct.pack("=i", error) + bytes(16)


def test_acks_read_back_with_errno():
    data = ack(5, 0) + ack(6, -17) + b"\x00\x01"  # ok, EEXIST, then a cut-off tail
    assert a.parse_acks(data) == {5: 0, 6: 17}


def test_garbage_is_not_an_ack():
    assert a.parse_acks(b"") == {}
    assert a.parse_acks(bytes(40)) == {}  # length 0: stop, no crash
    other = a.NLMSGHDR.pack(20, 16, 0, 9, 0) + bytes(4)  # not NLMSG_ERROR
    assert a.parse_acks(other + ack(3, 0)) == {3: 0}
