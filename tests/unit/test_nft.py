"""fwcluster.nft without the kernel: the context, the default template, and
errors that name the template line. (Applying to a kernel is in
tests/lab/test_rules.py.)"""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from fwcluster import configfile
from fwcluster import nft
from fwcluster.core import config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "cluster.toml"
TEMPLATE = ROOT / "overlays" / "cluster" / "etc" / "fwcluster" / "ruleset.nft.j2"


@pytest.fixture
def cfg():
    return configfile.load(EXAMPLE, "fw1")


@pytest.fixture
def aa(cfg):
    return dataclasses.replace(cfg, balance=config.Balance("active-active", 12))


def _lines(text):
    return [line.strip() for line in text.splitlines()]


def test_context_carries_the_cluster_model(cfg):
    ctx = nft.context(cfg, "fw1")
    assert ctx["node"] == "fw1" and ctx["me"]["sync_address"] == "203.0.113.1"
    assert [p["name"] for p in ctx["peers"]] == ["fw2"]
    assert ctx["sync"] == {"interface": "sync0", "port": 3780, "peers4": ["203.0.113.2"], "peers6": [],
                           "interfaces": ["sync0"],
                           "links": [{"interface": "sync0", "peers4": ["203.0.113.2"], "peers6": []}],
                           "events_new": "assured", "events_all": "0x7ff", "nosync_mark": "0x10000000",
                           "nosync": "ct mark set ct mark or 0x10000000 ct event set 0x0"}
    assert [(v["vhid"], v["ip"], v["family"]) for v in ctx["vips"]] == [
        (1, "192.0.2.1", 4), (2, "198.51.100.1", 4), (3, "2001:db8:1::1", 6)]
    assert ctx["carp"]["interfaces"] == ["lan0", "wan0"]
    assert ctx["balance"]["active"] is False and ctx["vips"][0]["mac"] is None


def test_default_template_is_a_strict_stateful_firewall(cfg):
    lines = _lines(nft.render(cfg, "fw1", TEMPLATE).text)
    assert "type filter hook forward priority filter; policy drop;" in lines
    assert "type filter hook input priority filter; policy drop;" in lines
    fwd = lines.index("type filter hook forward priority filter; policy drop;")
    assert lines[fwd + 1:fwd + 3] == ["ct state invalid drop", "ct state established,related accept"]
    # CARP only on the vip interfaces, sync only from the peer on the sync link
    assert 'iifname { "lan0", "wan0" } meta l4proto 112 accept' in lines
    assert 'iifname "sync0" ip saddr { 203.0.113.2 } meta l4proto { tcp, udp } th dport 3780 accept' in lines
    assert 'iifname "lan0" oifname "wan0" ct state new accept' in lines
    assert not any("balance" in line or "jhash" in line for line in lines)


def test_default_template_with_balancing(aa):
    text = nft.render(aa, "fw2", TEMPLATE).text
    lines = _lines(text)
    assert "set owned_buckets {" in lines
    assert 'iifname "lan0" ether daddr 01:00:5e:00:01:01 goto balance_bucket' in lines
    assert 'iifname "wan0" ether daddr 01:00:5e:00:01:02 goto balance_bucket' in lines
    assert ("jhash ct original ip saddr . ct original ip daddr mod 12 seed 0xfc1a5eed "
            "@owned_buckets meta pkttype set host accept") in lines
    assert "arp saddr ip 192.0.2.1 arp saddr ether set 01:00:5e:00:01:01" in lines
    # untracked neighbour discovery must not fall into the hash's drop
    nd = lines.index("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } meta pkttype set host accept")
    assert nd < lines.index("counter drop")


def test_the_labs_snat_policy_is_expressible(cfg, tmp_path):
    t = tmp_path / "snat.nft.j2"
    t.write_text(TEMPLATE.read_text().replace("{%- set snat_to_vip = [] %}",
                                              '{%- set snat_to_vip = ["wan0"] %}'))
    lines = _lines(nft.render(cfg, "fw1", t).text)
    assert 'oifname "wan0" meta nfproto ipv4 snat ip to 198.51.100.1' in lines
    assert not any("snat" in line and "l4proto { tcp, udp }" in line for line in lines)


def test_active_active_members_nat_from_disjoint_port_slices(aa, tmp_path):
    t = tmp_path / "snat.nft.j2"
    t.write_text(TEMPLATE.read_text().replace("{%- set snat_to_vip = [] %}",
                                              '{%- set snat_to_vip = ["wan0"] %}'))
    rules = {m: [line for line in _lines(nft.render(aa, m, t).text) if "l4proto { tcp, udp } snat" in line]
             for m in ("fw1", "fw2")}
    assert rules["fw1"] == ['oifname "wan0" meta nfproto ipv4 meta l4proto { tcp, udp } '
                            'snat ip to 198.51.100.1:1024-33279']
    assert rules["fw2"] == ['oifname "wan0" meta nfproto ipv4 meta l4proto { tcp, udp } '
                            'snat ip to 198.51.100.1:33280-65535']


def test_nat_slices_stay_disjoint_when_one_member_lists_the_members_in_another_order(aa):
    reordered = dataclasses.replace(aa, members=tuple(reversed(aa.members)))
    assert nft.context(aa, "fw1")["nat"]["ports"] != nft.context(reordered, "fw2")["nat"]["ports"]


def test_undefined_variable_names_the_template_line(cfg, tmp_path):
    t = tmp_path / "t.j2"
    t.write_text("table inet x {\n\n  # {{ no_such_thing }}\n}\n")
    with pytest.raises(nft.RulesetError) as e:
        nft.render(cfg, "fw1", t)
    assert e.value.line == 3
    assert str(e.value).startswith(f"{t}:3: template error:") and "no_such_thing" in str(e.value)


def test_template_syntax_error_names_the_line(cfg, tmp_path):
    t = tmp_path / "t.j2"
    t.write_text("table inet x {\n{% for v in vips %}\n}\n")
    with pytest.raises(nft.RulesetError) as e:
        nft.render(cfg, "fw1", t)
    assert e.value.line is not None and "syntax error" in str(e.value)


def test_a_filter_error_names_the_template_line(cfg, tmp_path):
    t = tmp_path / "t.j2"
    t.write_text("table inet x {\n\tchain c {\n\t\tip saddr {{ [] | nft_set }} accept\n\t}\n}\n")
    with pytest.raises(nft.RulesetError) as e:
        nft.render(cfg, "fw1", t)
    assert e.value.line == 3 and "empty list" in str(e.value)


def test_missing_template_is_one_clear_line(cfg, tmp_path):
    with pytest.raises(nft.RulesetError, match="template not found"):
        nft.render(cfg, "fw1", tmp_path / "nope.j2")


def test_active_active_needs_the_owned_set(aa, tmp_path):
    t = tmp_path / "t.j2"
    t.write_text("table inet fwcluster {\n}\n")
    with pytest.raises(nft.RulesetError, match="declares no set owned_buckets"):
        nft.render(aa, "fw1", t)


def test_rendered_lines_map_back_through_loops_and_whitespace_control(cfg, tmp_path):
    t = tmp_path / "t.j2"
    t.write_text(
        "table inet x {\n"                              # 1
        "{%- for v in vips %}\n"                         # 2
        "\tchain c{{ v.vhid }} {\n"                      # 3
        "\t\tip saddr {{ v.ip }} accept\n"               # 4
        "\t}\n"                                          # 5
        "{%- endfor %}\n"                                # 6
        "{#- a comment\n   over two lines -#}\n"         # 7-8
        "\tchain last { counter }\n"                     # 9
        "}\n")                                           # 10
    r = nft.render(cfg, "fw1", t)
    lines = r.text.split("\n")
    third_rule = [i for i, s in enumerate(lines, 1) if "2001:db8:1::1" in s][0]
    assert r.template_line(third_rule, 3) == 4
    chain3 = [i for i, s in enumerate(lines, 1) if "chain c3" in s][0]
    assert r.template_line(chain3, 2) == 3
    # The comment's whitespace control joined line 9 onto line 5's "}"
    last = [i for i, s in enumerate(lines, 1) if "chain last" in s][0]
    assert lines[last - 1] == "\t}chain last { counter }"
    assert r.template_line(last, 2) == 5
    assert r.template_line(last, lines[last - 1].index("chain") + 1) == 9
    assert r.template_line(1, 1) == 1


def test_nft_error_text_is_mapped_to_the_template_line(cfg, tmp_path):
    t = tmp_path / "t.j2"
    t.write_text("table inet x {\n{%- for v in vips %}\n\tchain c{{ v.vhid }} {\n"
                 "\t\tip saddr {{ v.ip }} acept\n\t}\n{%- endfor %}\n}\n")
    r = nft.render(cfg, "fw1", t)
    rendered = [i for i, s in enumerate(r.text.split("\n"), 1) if "198.51.100.1" in s][0]
    # what libnftables prints, with the one line the apply puts in front
    err = (f"/tmp/fwcluster-x.nft:{rendered + 1}:32-32: Error: syntax error, unexpected newline\n"
           "\t\tip saddr 198.51.100.1 acept\n")
    e = nft._nft_error(r, err, offset=1)
    assert e.line == 4 and e.rendered_line == rendered
    assert str(e) == (f"{r.template}:4: nft: syntax error, unexpected newline "
                      f"(rendered line {rendered}: ip saddr 198.51.100.1 acept)")


def test_an_error_in_an_included_file_names_that_file(cfg, tmp_path):
    t = tmp_path / "t.j2"
    t.write_text('include "/etc/site/extra.nft"\n')
    r = nft.render(cfg, "fw1", t)
    err = "/etc/site/extra.nft:7:3-9: Error: syntax error, unexpected junk\n"
    e = nft._nft_error(r, err, offset=1, source="/tmp/fwcluster-x.nft")
    assert str(e) == f"{t}: nft: /etc/site/extra.nft:7: syntax error, unexpected junk"


def test_nft_set_filters():
    assert nft.nft_set(["192.0.2.1", "192.0.2.2"]) == "{ 192.0.2.1, 192.0.2.2 }"
    assert nft.nft_names(["lan0"]) == '{ "lan0" }'
    with pytest.raises(ValueError, match="empty"):
        nft.nft_set([])


def test_fwctl_rules_render_needs_no_kernel(tmp_path):
    cp = subprocess.run([sys.executable, "-m", "fwcluster.fwctl", "--config", str(EXAMPLE),
                         "--node", "fw2", "rules", "render", "--template", str(TEMPLATE)],
                        capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert 'ip saddr { 203.0.113.1 } meta l4proto { tcp, udp } th dport 3780 accept' in cp.stdout


def test_fwctl_rules_bad_template_exits_1_with_the_line(tmp_path):
    t = tmp_path / "t.j2"
    t.write_text("table inet x {\n  {{ nope }}\n}\n")
    cp = subprocess.run([sys.executable, "-m", "fwcluster.fwctl", "--config", str(EXAMPLE),
                         "--node", "fw1", "rules", "check", "--template", str(t)],
                        capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert cp.returncode == 1
    assert cp.stderr.startswith(f"error: {t}:2: template error:")


@pytest.mark.parametrize("source,reason", [
    # the classic escape to Python internals (os.system and the like)
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}\n", "unsafe"),
    ("{{ cycler.__init__.__globals__.os.system('true') }}\n", "unsafe"),
    ("{% include 'secret' %}\n", "template not found"),
    ("{% include 'node' %}\n", "template not found"),
])
def test_template_is_sandboxed(cfg, tmp_path, source, reason):
    (tmp_path / "secret").write_text("Unit-test-passphrase-4wYq\n")
    (tmp_path / "node").write_text("fw1\n")
    t = tmp_path / "t.nft.j2"
    t.write_text(source)
    with pytest.raises(nft.RulesetError) as ei:
        nft.render(cfg, "fw1", str(t))
    assert reason in str(ei.value).lower() and "passphrase" not in str(ei.value)


def test_virtual_mac_macvlans_join_the_inside_interface(cfg):
    """Traffic sent to a virtual-MAC vip arrives on its macvlan (iifname
    fwvmac<vhid>): the forward rule of its interface must take it too."""
    plain = _lines(nft.render(cfg, "fw1", TEMPLATE).text)
    assert 'iifname "lan0" oifname "wan0" ct state new accept' in plain
    vips = tuple(dataclasses.replace(v, mac="virtual") if v.interface == "lan0" else v
                 for v in cfg.vips)
    ctx = nft.context(dataclasses.replace(cfg, vips=vips), "fw1")
    assert ctx["vmacs"] == {"lan0": ["fwvmac1", "fwvmac3"]}
    assert [v["vmac"] for v in ctx["vips"]] == ["fwvmac1", None, "fwvmac3"]
    text = _lines(nft.render(dataclasses.replace(cfg, vips=vips), "fw1", TEMPLATE).text)
    assert 'iifname { "lan0", "fwvmac1", "fwvmac3" } oifname "wan0" ct state new accept' in text


def test_several_groups_mark_a_flows_group_at_its_first_packet(cfg):
    """The static split: flows sent to the second group's vip MACs (or
    addressed to its vips) carry group 1 in ct mark bits 24-27, which
    syncd's ownership reads; the first group's are mark 0. One group: no
    mark rules at all (the ruleset as before)."""
    assert "ct mark set" not in nft.render(cfg, "fw1", TEMPLATE).text
    split = configfile.load(ROOT / "docs" / "examples" / "cluster-split.toml", "fw1")
    text = _lines(nft.render(split, "fw1", TEMPLATE).text)
    set_mark = "ct mark set ct mark and 0xf0ffffff or 0x01000000"
    assert [ln for ln in text if "ct mark set" in ln] == [
        f"ct state new ether daddr 00:00:5e:00:01:03 {set_mark}",
        f"ct state new ip daddr 192.0.2.2 {set_mark}",
        f"ct state new ether daddr 00:00:5e:00:01:04 {set_mark}",
        f"ct state new ip daddr 198.51.100.2 {set_mark}"]
    assert config.group_of_mark(0x01000000) == split.group_index("right") == 1


def test_ct_event_masks_follow_the_sync_filter(cfg):
    """[sync] filter states = "sessions" (default): a new flow's events are
    masked to the one that makes it assured; an assured flow that is not
    no-sync gets them all. states = "all": no masks."""
    lines = _lines(nft.render(cfg, "fw1", TEMPLATE).text)
    chain = lines.index("chain sync_events {")
    assert lines[chain + 1:chain + 4] == [
        "type filter hook prerouting priority -190; policy accept;",
        "ct state new ct event set assured",
        "ct status assured ct mark and 0x10000000 == 0 ct event set 0x7ff"]
    every = dataclasses.replace(cfg, sync=dataclasses.replace(cfg.sync, filter=config.SyncFilter("all")))
    assert "sync_events" not in nft.render(every, "fw1", TEMPLATE).text


def _with_helpers(cfg, *helpers):
    return dataclasses.replace(cfg, firewall=dataclasses.replace(cfg.firewall, helpers=helpers))


def test_no_helpers_no_helper_rules(cfg):
    text = nft.render(cfg, "fw1", TEMPLATE).text
    assert "ct helper" not in text and nft.context(cfg, "fw1")["helpers"] == []


def test_helpers_are_objects_assigned_to_new_forwarded_connections(cfg):
    """[firewall] helpers: one ct helper object per protocol and port, set on
    new forwarded connections to that port before forward_new accepts them;
    what they expect passes as related. The kernel takes the ruleset (it is
    loaded in a scratch namespace) and lists the objects back."""
    two = _with_helpers(cfg, config.Helper("ftp", 21), config.Helper("sip", 5060))
    r = nft.render(two, "fw1", TEMPLATE)
    lines = _lines(r.text)
    fwd = lines.index("type filter hook forward priority filter; policy drop;")
    assert lines[fwd + 1:fwd + 5] == [
        "ct state invalid drop", "ct state established,related accept",
        'ct state new tcp dport 21 ct helper set "ftp_21"',
        'ct state new udp dport 5060 ct helper set "sip_5060"']
    listed = _lines(nft.normalized(r.text))
    for name, kind, proto in (("ftp_21", "ftp", "tcp"), ("sip_5060", "sip", "udp")):
        obj = listed.index(f"ct helper {name} {{")
        assert listed[obj + 1:obj + 3] == [f'type "{kind}" protocol {proto}', "l3proto inet"]
    assert 'ct state new tcp dport 21 ct helper set "ftp_21"' in listed
