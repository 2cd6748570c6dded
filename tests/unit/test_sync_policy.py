"""syncd.core.policy: which entries are replicated (pure)."""
from syncd.core import wire
from syncd.core.entry import OP_UPSERT, Entry
from fwcluster.core.config import NOSYNC_MARK, SyncFilter
from syncd.core.entry import IPS_ASSURED, IPS_CONFIRMED, IPS_SEEN_REPLY
from syncd.core.policy import EVERY, compile_filter, own_addresses, packed, syncable as syncable_entry, syncable_record

OWN = own_addresses(["192.0.2.11", "198.51.100.11", "203.0.113.1", "198.51.100.1", "fe80::1%lan0"],
                    ["192.0.2.1/24", "198.51.100.1/24"], ["203.0.113.1", "203.0.113.2"])


def e(proto=6, osrc="192.0.2.100", odst="198.51.100.100", sport=40000, dport=80,
      rsrc=None, rdst=None, status=0, mark=0):
    return Entry(4, proto, 0, osrc, odst, sport, dport, rsrc or odst, rdst or osrc, dport, sport,
                 status=status, mark=mark)


def syncable(entry, own, flt=EVERY) -> bool:
    """Both forms of the policy, on the entry and on its wire record, agree."""
    verdict = syncable_entry(entry, own, flt)
    assert syncable_record(wire.encode_record(OP_UPSERT, entry), packed(own), flt) == verdict, entry
    return verdict


def test_forwarded_flows_are_synced_also_snat_to_a_vip():
    assert syncable(e(), OWN)
    assert syncable(e(rdst="198.51.100.1"), OWN)       # SNAT to the WAN vip
    assert "198.51.100.1" not in OWN and "203.0.113.1" in OWN


def test_skipped_flows():
    assert not syncable(e(proto=112, odst="224.0.0.18"), OWN)                  # CARP
    assert not syncable(e(proto=17, osrc="203.0.113.2", odst="203.0.113.9", dport=3780), OWN)  # peer's sync
    assert syncable(e(proto=17, sport=3780, dport=53), OWN)          # a forwarded flow on the sync port
    assert not syncable(e(osrc="192.0.2.11"), OWN)                             # from the member
    assert not syncable(e(odst="198.51.100.11"), OWN)                          # to the member
    assert not syncable(e(rdst="198.51.100.11"), OWN)                          # masqueraded to own
    assert not syncable(e(odst="224.0.0.251"), OWN)                            # multicast
    assert not syncable(e(osrc="127.0.0.1", odst="127.0.0.1"), OWN)
    assert not syncable(e(status=1 << 12), OWN)                                # untracked
    assert not syncable(e(status=1 << 11), OWN)                                # template


def test_ipv6():
    own = own_addresses(["2001:db8:1::11"], [], ["2001:db8:ff::1"])
    v6 = Entry(6, 17, 0, "2001:db8:2::5", "2001:db8:3::5", 5000, 53, "2001:db8:3::5", "2001:db8:2::5", 53, 5000)
    assert syncable(v6, own)
    assert not syncable(v6._replace(rdst="2001:db8:1::11"), own)
    assert not syncable(v6._replace(odst="ff02::fb"), own)
    assert not syncable(v6._replace(osrc="fe80::1"), own)


SESSIONS = compile_filter(SyncFilter())
ASSURED = IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED


def test_default_filter_replicates_assured_entries_and_their_ends():
    assert not syncable(e(status=IPS_CONFIRMED), OWN, SESSIONS)     # a SYN (flood or not)
    assert not syncable(e(status=IPS_CONFIRMED | IPS_SEEN_REPLY), OWN, SESSIONS)  # SYN_RECV, a DNS answer
    assert syncable(e(status=ASSURED), OWN, SESSIONS)               # established
    assert syncable(e(proto=17, dport=53, status=ASSURED), OWN, SESSIONS)
    assert not syncable(e(proto=1, dport=8 << 8, status=IPS_CONFIRMED | IPS_SEEN_REPLY), OWN, SESSIONS)  # ping
    end = wire.encode_record(wire.OP_DELETE, e(status=ASSURED))     # a DESTROY keeps its status
    assert syncable_record(end, packed(OWN), SESSIONS)
    # a DESTROY without status (the kernel did not say) is not taken for an unassured entry's
    assert syncable_record(wire.encode_record(wire.OP_DELETE, e(status=0)), packed(OWN), SESSIONS)
    assert syncable(e(status=IPS_CONFIRMED), OWN, compile_filter(SyncFilter("all")))  # "all": as before


def test_filter_protocols_ranges_and_the_nosync_mark():
    tcp_only = compile_filter(SyncFilter("sessions", (6,)))
    assert syncable(e(status=ASSURED), OWN, tcp_only)
    assert not syncable(e(proto=17, status=ASSURED), OWN, tcp_only)
    guests = compile_filter(SyncFilter("all", (), ("192.0.2.128/25", "2001:db8:9::/48")))
    assert syncable(e(osrc="192.0.2.100"), OWN, guests)
    assert not syncable(e(osrc="192.0.2.200"), OWN, guests)
    assert not syncable(e(rsrc="192.0.2.129"), OWN, guests)     # a DNAT into the range
    v6 = Entry(6, 17, 0, "2001:db8:9::5", "2001:db8:3::5", 5000, 53, "2001:db8:3::5",
               "2001:db8:9::5", 53, 5000)
    assert not syncable(v6, OWN, guests)
    assert syncable(v6._replace(osrc="2001:db8:8::5", rdst="2001:db8:8::5"), OWN, guests)
    for flt in (EVERY, SESSIONS):
        assert not syncable(e(status=ASSURED, mark=NOSYNC_MARK | 7), OWN, flt)
        assert syncable(e(status=ASSURED, mark=0x0f000007), OWN, flt)   # group bits are not it


def test_young_sessions_are_answered_unassured_non_tcp_flows_the_filter_keeps():
    """What a member that stops forwarding hands over (syncd/handover.py):
    answered, not yet assured, not TCP nor ICMP, and otherwise in the
    filter's scope; nothing with states = "all" (everything went already)."""
    from syncd.core.policy import young_session
    sessions = compile_filter(SyncFilter())
    answered = IPS_CONFIRMED | IPS_SEEN_REPLY
    assert young_session(e(proto=17, dport=5103, status=answered), OWN, sessions)
    assert young_session(e(proto=47, sport=0, dport=0, status=answered), OWN, sessions)   # GRE
    assert not young_session(e(proto=17, status=IPS_CONFIRMED), OWN, sessions)      # unanswered
    assert not young_session(e(proto=17, status=answered | IPS_ASSURED), OWN, sessions)  # sent already
    assert not young_session(e(proto=6, status=answered), OWN, sessions)            # TCP handshake
    assert not young_session(e(proto=1, status=answered), OWN, sessions)            # ICMP
    assert not young_session(e(proto=17, osrc="192.0.2.11", status=answered), OWN, sessions)
    assert not young_session(e(proto=17, status=answered, mark=NOSYNC_MARK), OWN, sessions)
    tcp_only = compile_filter(SyncFilter(protocols=(6,)))
    assert not young_session(e(proto=17, status=answered), OWN, tcp_only)
    assert not young_session(e(proto=17, status=answered), OWN, compile_filter(SyncFilter(states="all")))
