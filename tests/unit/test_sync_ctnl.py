"""syncd.ctnl (the fast ctnetlink codec) against pyroute2's nfct_msg, both ways."""
import socket

from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from syncd import ctnl
from syncd.core import wire
from syncd.core.entry import OP_DELETE, OP_UPSERT, Entry

TCP_SNAT = Entry(4, 6, 0, "192.0.2.100", "198.51.100.100", 40000, 80,
                 "198.51.100.100", "198.51.100.1", 80, 61000, status=0x19e, timeout=431999,
                 mark=7, tcp_state=3, wscale_orig=7, wscale_reply=6, flags_orig=0x23, flags_reply=0x33)
UDP6_ZONE = Entry(6, 17, 5, "2001:db8:1::100", "2001:db8:2::100", 5353, 53,
                  "2001:db8:2::100", "2001:db8:1::100", 53, 5353, status=0xe, timeout=120)
ICMP = Entry(4, 1, 0, "192.0.2.100", "198.51.100.100", 77, 8 << 8,
             "198.51.100.100", "192.0.2.100", 77, 0, status=0xe, timeout=30)


def pyroute2_decode(data: bytes):
    m = nfct_msg(data)
    m.decode()
    return m


def tuple_of(m, name):
    t = m.get_attr(name)
    ip = t.get_attr("CTA_TUPLE_IP")
    pr = t.get_attr("CTA_TUPLE_PROTO")
    return ({k: v for k, v in ip["attrs"]}, {k: v for k, v in pr["attrs"]})


def test_create_message_as_pyroute2_reads_it():
    m = pyroute2_decode(ctnl.encode_create(TCP_SNAT, seq=7))
    assert m["header"]["sequence_number"] == 7 and m["nfgen_family"] == socket.AF_INET
    ip, pr = tuple_of(m, "CTA_TUPLE_ORIG")
    assert ip == {"CTA_IP_V4_SRC": "192.0.2.100", "CTA_IP_V4_DST": "198.51.100.100"}
    assert pr == {"CTA_PROTO_NUM": 6, "CTA_PROTO_SRC_PORT": 40000, "CTA_PROTO_DST_PORT": 80}
    ip, pr = tuple_of(m, "CTA_TUPLE_REPLY")          # the inverse: the kernel applies the NAT
    assert ip == {"CTA_IP_V4_SRC": "198.51.100.100", "CTA_IP_V4_DST": "192.0.2.100"}
    nat = m.get_attr("CTA_NAT_SRC")
    assert nat.get_attr("CTA_NAT_V4_MINIP") == nat.get_attr("CTA_NAT_V4_MAXIP") == "198.51.100.1"
    ports = nat.get_attr("CTA_NAT_PROTO")
    assert ports.get_attr("CTA_PROTONAT_PORT_MIN") == ports.get_attr("CTA_PROTONAT_PORT_MAX") == 61000
    assert m.get_attr("CTA_NAT_DST") is None
    assert m.get_attr("CTA_TIMEOUT") == 431999 and m.get_attr("CTA_MARK") == 7
    assert m.get_attr("CTA_STATUS") & 0x6 == 0x6           # SEEN_REPLY | ASSURED
    tcp = m.get_attr("CTA_PROTOINFO").get_attr("CTA_PROTOINFO_TCP")
    assert tcp.get_attr("CTA_PROTOINFO_TCP_STATE") == 3
    assert tcp.get_attr("CTA_PROTOINFO_TCP_WSCALE_ORIGINAL") == 7
    assert tcp.get_attr("CTA_PROTOINFO_TCP_WSCALE_REPLY") == 6
    assert tcp.get_attr("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL") == (0x23, 0xFF)


def test_update_and_delete_carry_no_nat():
    m = pyroute2_decode(ctnl.encode_update(TCP_SNAT, seq=1))
    assert m.get_attr("CTA_NAT_SRC") is None and m.get_attr("CTA_TUPLE_REPLY") is None
    d = pyroute2_decode(ctnl.encode_delete(UDP6_ZONE, seq=2))
    assert d["nfgen_family"] == socket.AF_INET6 and d.get_attr("CTA_ZONE") == 5
    ip, pr = tuple_of(d, "CTA_TUPLE_ORIG")
    assert ip["CTA_IP_V6_SRC"] == "2001:db8:1::100" and pr["CTA_PROTO_DST_PORT"] == 53


def test_icmp_tuple():
    m = pyroute2_decode(ctnl.encode_create(ICMP, seq=3))
    _, pr = tuple_of(m, "CTA_TUPLE_ORIG")
    assert pr == {"CTA_PROTO_NUM": 1, "CTA_PROTO_ICMP_ID": 77, "CTA_PROTO_ICMP_TYPE": 8,
                  "CTA_PROTO_ICMP_CODE": 0}


def pyroute2_event(e: Entry) -> bytes:
    """A conntrack NEW message as the kernel would send it, built by pyroute2."""
    v = "V4" if e.family == 4 else "V6"

    def tup(src, dst, sp, dp):
        proto = [["CTA_PROTO_NUM", e.proto]]
        if e.proto == 1:
            proto += [["CTA_PROTO_ICMP_ID", sp], ["CTA_PROTO_ICMP_TYPE", dp >> 8],
                      ["CTA_PROTO_ICMP_CODE", dp & 0xFF]]
        else:
            proto += [["CTA_PROTO_SRC_PORT", sp], ["CTA_PROTO_DST_PORT", dp]]
        return {"attrs": [["CTA_TUPLE_IP", {"attrs": [[f"CTA_IP_{v}_SRC", src], [f"CTA_IP_{v}_DST", dst]]}],
                          ["CTA_TUPLE_PROTO", {"attrs": proto}]]}

    m = nfct_msg()
    m["nfgen_family"] = socket.AF_INET if e.family == 4 else socket.AF_INET6
    attrs = [["CTA_TUPLE_ORIG", tup(e.osrc, e.odst, e.osport, e.odport)],
             ["CTA_TUPLE_REPLY", tup(e.rsrc, e.rdst, e.rsport, e.rdport)],
             ["CTA_STATUS", e.status], ["CTA_TIMEOUT", e.timeout], ["CTA_MARK", e.mark]]
    if e.zone:
        attrs.append(["CTA_ZONE", e.zone])
    if e.tcp_state:
        attrs.append(["CTA_PROTOINFO", {"attrs": [["CTA_PROTOINFO_TCP", {"attrs": [
            ["CTA_PROTOINFO_TCP_STATE", e.tcp_state],
            ["CTA_PROTOINFO_TCP_WSCALE_ORIGINAL", e.wscale_orig],
            ["CTA_PROTOINFO_TCP_WSCALE_REPLY", e.wscale_reply],
            ["CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", {"value": (e.flags_orig, 0)}],
            ["CTA_PROTOINFO_TCP_FLAGS_REPLY", {"value": (e.flags_reply, 0)}]]}]]}])
    m["attrs"] = attrs
    m["header"]["type"] = ctnl.CT_NEW
    m["header"]["flags"] = 0x600     # NLM_F_CREATE | NLM_F_EXCL: a NEW event
    m.encode()
    return bytes(m.data)


def test_parse_what_pyroute2_encodes():
    for e in (TCP_SNAT, UDP6_ZONE, ICMP):
        data = pyroute2_event(e)
        msgs = list(ctnl.split(data + data))
        assert len(msgs) == 2
        mtype, flags, _seq, _pid, off, end = msgs[0]
        assert ctnl.event_kind(mtype, flags) == ctnl.EV_NEW
        assert ctnl.parse_entry(data, off, end) == e


def test_split_stops_at_garbage():
    data = pyroute2_event(TCP_SNAT)
    assert len(list(ctnl.split(data + b"\x05\x00\x00"))) == 1
    assert list(ctnl.split(b"\xff\xff\x00\x00" + bytes(12))) == []


VARIANTS = [TCP_SNAT, UDP6_ZONE, ICMP,
            TCP_SNAT._replace(rsrc="203.0.113.80", rsport=8080, zone=3, mark=0, timeout=0),   # + DNAT
            UDP6_ZONE._replace(rdst="2001:db8:2::1", rdport=40000, status=0x1e)]           # v6 SNAT


def test_fast_encoders_equal_generic():
    for e in VARIANTS:
        assert ctnl.encode_create(e, 9) == ctnl.encode_create_generic(e, 9), e
        assert ctnl.encode_create(e, 9, exclusive=False) == ctnl.encode_create_generic(e, 9, False)
        assert ctnl.encode_update(e, 4) == ctnl.encode_update_generic(e, 4), e
    for e in VARIANTS + [UDP6_ZONE._replace(osport=0, odport=0, zone=0)]:
        assert ctnl.encode_delete(e, 5) == ctnl.encode_delete_generic(e, 5), e


def test_fast_parser_equals_generic():
    for e in VARIANTS:
        data = pyroute2_event(e)
        assert ctnl.parse_entry(data, 16, len(data)) == ctnl.parse_entry_generic(data, 16, len(data)) == e


def test_event_record_is_the_wire_record_of_the_parsed_entry():
    for e in VARIANTS:
        data = pyroute2_event(e)
        for kind, op in ((ctnl.EV_NEW, OP_UPSERT), (ctnl.EV_UPDATE, OP_UPSERT), (ctnl.EV_DESTROY, OP_DELETE)):
            rec = ctnl.event_record(data, 16, len(data), kind)
            assert rec == wire.encode_record(op, e), e
            assert wire.decode_record(rec, 0)[:2] == (op, e)
    bad = bytearray(pyroute2_event(TCP_SNAT))
    bad[16] = 99     # a family sync does not carry
    assert ctnl.event_record(bytes(bad), 16, len(bad), ctnl.EV_NEW) is None


FTP_CONTROL = Entry(4, 6, 0, "192.0.2.100", "198.51.100.100", 40021, 21,
                    "198.51.100.100", "192.0.2.100", 21, 40021, status=0x200e, timeout=431999,
                    tcp_state=3, wscale_orig=7, wscale_reply=7, helper="ftp")


def _help_name(data: bytes):
    """CTA_HELP's CTA_HELP_NAME of a message, as the kernel nests it."""
    a = ctnl._attrs_of(data, 20, len(data))
    if ctnl.CTA_HELP not in a:
        return None
    name = ctnl._attrs_of(data, *a[ctnl.CTA_HELP])[ctnl.CTA_HELP_NAME]
    return data[name[0]:name[1]]


def test_a_created_entry_carries_its_helper_and_an_update_never_does():
    """The kernel attaches a helper only to an entry it creates (and refuses
    CTA_HELP on an existing one without a helper)."""
    for e in (FTP_CONTROL, FTP_CONTROL._replace(family=6, osrc="2001:db8:1::100", odst="2001:db8:2::100",
                                                rsrc="2001:db8:2::100", rdst="2001:db8:1::100")):
        create = ctnl.encode_create(e, 1)
        assert create == ctnl.encode_create_generic(e, 1)
        assert _help_name(create) == b"ftp\0"
        assert _help_name(ctnl.encode_update(e, 2)) is None
        assert _help_name(ctnl.encode_create(e._replace(helper=""), 3)) is None


def test_the_helper_of_an_event_goes_into_its_wire_record():
    data = ctnl.encode_create(FTP_CONTROL, 1)   # tuples and CTA_HELP as in a kernel event
    assert ctnl.parse_entry(data, 16, len(data)) == ctnl.parse_entry_generic(data, 16, len(data)) == FTP_CONTROL
    rec = ctnl.event_record(data, 16, len(data), ctnl.EV_NEW)
    assert rec == wire.encode_record(OP_UPSERT, FTP_CONTROL)
    assert wire.decode_record(rec, 0)[1].helper == "ftp"
