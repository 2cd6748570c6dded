"""Kea's configuration as fwcluster renders it: static HA roles from the
CARP preference, the HA endpoint on the sync addresses with a password
derived from the secret, pools/options/reservations from [[dhcp]], and Kea's
own `-t` check accepts it (where Kea is installed)."""
import dataclasses
import json
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from fwcluster import configfile, dhcpsvc, nft
from fwcluster.core import config, dhcp

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "cluster-dhcp.toml"
TEMPLATE = str(ROOT / "overlays" / "cluster" / "etc" / "fwcluster" / "ruleset.nft.j2")
SECRET = b"Unit-test-passphrase-4wYq"


@pytest.fixture
def cfg():
    return configfile.load(EXAMPLE, "fw1")


def _members(cfg, *skews):
    members = tuple(config.Member(f"fw{i + 1}", config.ipaddress.ip_address(f"203.0.113.{i + 1}"), s)
                    for i, s in enumerate(skews))
    return dataclasses.replace(cfg, members=members)


def test_the_carp_preferred_member_is_primary(cfg):
    assert dhcp.ha_roles(cfg) == {"fw1": "primary", "fw2": "standby"}
    assert dhcp.ha_roles(_members(cfg, 100, 0)) == {"fw1": "standby", "fw2": "primary"}
    # a tie goes by name; members beyond two are backups
    assert dhcp.ha_roles(_members(cfg, 50, 50, 10)) == {"fw1": "standby", "fw2": "backup", "fw3": "primary"}
    lb = dataclasses.replace(cfg, dhcp_ha=config.DhcpHa(mode="load-balancing"))
    assert dhcp.ha_roles(lb) == {"fw1": "primary", "fw2": "secondary"}


def test_ha_password_is_derived_not_the_secret():
    p = dhcp.ha_password(SECRET, "edge")
    assert p == dhcp.ha_password(SECRET, "edge") and len(p) == 32
    assert p != dhcp.ha_password(SECRET + b"x", "edge") != dhcp.ha_password(SECRET, "edge2")
    assert SECRET.decode() not in p


def _render(cfg, node="fw1", **kw):
    return dhcp.dhcp4(cfg, node, secret=SECRET, lease_file="/var/lib/kea/l.csv",
                      control_socket="/run/kea/s.sock", **kw)["Dhcp4"]


def test_dhcp4_carries_the_config(cfg):
    d4 = _render(cfg, "fw2")
    (subnet,) = d4["subnet4"]
    assert subnet["subnet"] == "192.0.2.0/24" and subnet["interface"] == "lan0"
    assert subnet["pools"] == [{"pool": "192.0.2.100 - 192.0.2.199"}]
    opts = {o["name"]: o["data"] for o in subnet["option-data"]}
    assert opts == {"routers": "192.0.2.1", "domain-name-servers": "192.0.2.1",
                    "domain-name": "example.org"}
    assert subnet["reservations"] == [{"hw-address": "02:00:00:00:00:10", "ip-address": "192.0.2.110",
                                       "hostname": "printer"}]
    assert d4["lease-database"] == {"type": "memfile", "persist": True, "name": "/var/lib/kea/l.csv",
                                    "lfc-interval": dhcp.LFC_MAX}
    (ha,) = d4["hooks-libraries"][1]["parameters"]["high-availability"]
    assert ha["this-server-name"] == "fw2" and ha["mode"] == "hot-standby"
    assert ha["max-response-delay"] == 3000 and ha["heartbeat-delay"] == dhcp.HEARTBEAT_MS
    assert ha["max-unacked-clients"] == 0
    peers = {p["name"]: p for p in ha["peers"]}
    assert peers["fw1"]["url"] == "http://203.0.113.1:8647/" and peers["fw1"]["role"] == "primary"
    assert peers["fw2"]["url"] == "http://203.0.113.2:8647/" and peers["fw2"]["role"] == "standby"
    assert {p["basic-auth-password"] for p in ha["peers"]} == {dhcp.ha_password(SECRET, "edge")}


def test_dhcp6_has_the_same_ha_as_dhcp4_and_its_own_duid(cfg):
    d6 = dhcp.dhcp6(cfg, "fw2", secret=SECRET, lease_file="/var/lib/kea/l6.csv",
                    control_socket="/run/kea/s6.sock")["Dhcp6"]
    ha6 = d6["hooks-libraries"][1]["parameters"]["high-availability"]
    assert ha6 == _render(cfg, "fw2")["hooks-libraries"][1]["parameters"]["high-availability"]
    (subnet,) = d6["subnet6"]
    assert (subnet["id"], subnet["subnet"], subnet["interface"]) == (1, "2001:db8:1::/64", "lan0")
    assert subnet["pools"] == [{"pool": "2001:db8:1::1000 - 2001:db8:1::1fff"}]
    assert {o["name"]: o["data"] for o in subnet["option-data"]} == {
        "dns-servers": "2001:db8:1::1", "domain-search": "example.org"}
    assert d6["lease-database"]["name"] == "/var/lib/kea/l6.csv"
    assert d6["control-socket"]["socket-name"] == "/run/kea/s6.sock"
    # Each member its own DUID, the same on every render (no server-id file).
    assert d6["server-id"] == dhcp.server_duid(cfg, "fw2") != dhcp.server_duid(cfg, "fw1")
    assert d6["server-id"]["persist"] is False


def test_no_dhcp6_without_pools6(cfg, tmp_path):
    v4 = dataclasses.replace(cfg, dhcp=tuple(dataclasses.replace(d, pools6=()) for d in cfg.dhcp))
    assert not dhcp.serves6(v4) and dhcp.serves6(cfg)
    paths = dhcpsvc.Paths(conf_dir=str(tmp_path), lease_file="l", control_socket="s",
                          lease_file6="l6", control_socket6="s6")
    assert set(dhcpsvc.render(v4, "fw1", SECRET, paths)) == {paths.dhcp4, paths.ctrl_agent}
    ca = json.loads(dhcpsvc.render(cfg, "fw1", SECRET, paths)[paths.ctrl_agent])["Control-agent"]
    assert ca["control-sockets"]["dhcp6"]["socket-name"] == "s6"
    assert "dhcp6" not in json.loads(dhcpsvc.render(v4, "fw1", SECRET, paths)[paths.ctrl_agent])[
        "Control-agent"]["control-sockets"]
    text = nft.render(v4, "fw1", TEMPLATE).text
    assert "dport 547" not in text


def _pools(cfg, pools, lease_time):
    d = dataclasses.replace(cfg.dhcp[0], pools=tuple(pools), lease_time=lease_time)
    return dataclasses.replace(cfg, dhcp=(d,))


def test_lease_file_stays_bounded_on_config(cfg):
    """kea-lfc runs often enough that the busiest LAN the config allows
    (every pool address leased, renewing at half a 60 s lease) keeps the
    lease file, with kea-lfc's compacted copy beside it while it runs,
    within a third of the 32 MiB /config."""
    ip = config.ipaddress.ip_address
    busiest = _pools(cfg, [(ip("192.0.2.0"), ip("192.0.2.255"))] * 64,
                     lease_time=60)
    assert dhcp.pool_addresses(busiest) == config.MAX_DHCP_ADDRESSES
    assert dhcp.LFC_MIN <= dhcp.lfc_interval(busiest) < dhcp.LFC_MAX
    compacted = dhcp.pool_addresses(busiest) * dhcp.LEASE_ROW_BYTES[4]
    assert dhcp.lease_file_bound(busiest) + compacted <= (32 << 20) // 3
    # a small site keeps the long interval, and its file stays small
    assert dhcp.lfc_interval(cfg) == dhcp.LFC_MAX
    assert dhcp.lease_file_bound(cfg) < 64 << 10


def test_lease_space_problem_only_when_nearly_full():
    assert dhcp.lease_space_problem(None) is None
    assert dhcp.lease_space_problem(dhcp.LEASE_SPACE_LOW) is None
    assert "full (0 KiB free)" in dhcp.lease_space_problem(0)


def test_ctrl_agent_listens_on_the_sync_address_with_basic_auth(cfg):
    ca = dhcp.ctrl_agent(cfg, "fw2", secret=SECRET, control_socket="/run/kea/s.sock")["Control-agent"]
    assert (ca["http-host"], ca["http-port"]) == ("203.0.113.2", 8647)
    assert ca["authentication"]["type"] == "basic"
    assert ca["authentication"]["clients"] == [{"user": "edge", "password": dhcp.ha_password(SECRET, "edge")}]
    assert ca["control-sockets"]["dhcp4"]["socket-name"] == "/run/kea/s.sock"


def _on_lo(cfg):
    """The example served on "lo": `kea-dhcp4 -t` checks that the interface exists."""
    vips = tuple(dataclasses.replace(v, interface="lo") if v.interface == "lan0" else v for v in cfg.vips)
    return dataclasses.replace(cfg, vips=vips, dhcp=tuple(dataclasses.replace(d, interface="lo")
                                                          for d in cfg.dhcp))


@pytest.mark.skipif(not shutil.which("kea-dhcp4", path="/usr/sbin:/usr/bin"), reason="Kea not installed")
@pytest.mark.parametrize("mode", config.DHCP_HA_MODES)
def test_kea_accepts_the_rendered_config(cfg, mode):
    c = dataclasses.replace(_on_lo(cfg), dhcp_ha=config.DhcpHa(mode=mode))
    assert dhcpsvc.check(c, "fw1", SECRET) == []


@pytest.mark.skipif(not shutil.which("kea-dhcp4", path="/usr/sbin:/usr/bin"), reason="Kea not installed")
def test_kea_check_reports_its_own_error(cfg):
    missing = dataclasses.replace(cfg, dhcp=tuple(dataclasses.replace(d, interface="fwtnosuch0")
                                                  for d in cfg.dhcp))
    problems = dhcpsvc.check(missing, "fw1", SECRET)
    v6 = bool(shutil.which("kea-dhcp6", path="/usr/sbin:/usr/bin"))
    assert [p.split(":")[0] for p in problems] == ["kea-dhcp4 -t"] + ["kea-dhcp6 -t"] * v6
    assert all("fwtnosuch0" in p for p in problems)


def test_files_are_written_private(cfg, tmp_path):
    paths = dhcpsvc.Paths(conf_dir=str(tmp_path / "kea"), lease_file=str(tmp_path / "l"),
                          control_socket=str(tmp_path / "s"))
    files = dhcpsvc.render(cfg, "fw1", SECRET, paths)
    assert set(files) == {paths.dhcp4, paths.dhcp6, paths.ctrl_agent}
    assert sorted(dhcpsvc.write(files)) == sorted(files)
    assert (Path(paths.dhcp4).stat().st_mode & 0o777) == 0o640
    assert json.loads(Path(paths.dhcp4).read_text())["Dhcp4"]["lease-database"]["name"] == str(tmp_path / "l")
    assert dhcpsvc.write(files) == []  # unchanged: not rewritten (no needless reload)
    # the directory as Kea's units would make it (Kea 2.6.3 wants 0750)
    conf_dir = Path(paths.conf_dir).stat()
    assert conf_dir.st_mode & 0o777 == 0o750
    try:
        assert conf_dir.st_uid == pwd.getpwnam(dhcpsvc.KEA_GROUP).pw_uid
    except KeyError:
        pass  # no Kea user on this machine


STATUS_GET = {"high-availability": [{"ha-mode": "hot-standby", "ha-servers": {
    "local": {"role": "standby", "scopes": [], "state": "hot-standby"},
    "remote": {"age": 1, "in-touch": True, "last-scopes": ["fw1"], "last-state": "hot-standby",
               "role": "primary", "unacked-clients": 0}}}]}


def test_status_summaries(cfg):
    s = dhcp.ha_summary(STATUS_GET)
    assert (s["role"], s["state"], s["partner_role"], s["partner_state"]) == \
        ("standby", "hot-standby", "primary", "hot-standby")
    assert dhcp.ha_summary({})["state"] is None
    stats = {"subnet[1].assigned-addresses": [[7, "2026-01-01 00:00:00.0"]],
             "subnet[1].total-addresses": [[100, "2026-01-01 00:00:00.0"]]}
    assert dhcp.lease_counts(cfg, stats) == [{"interface": "lan0", "subnet": "192.0.2.0/24",
                                              "assigned": 7, "total": 100}]
    assert dhcp.lease_counts(cfg, {})[0]["assigned"] is None
    stats6 = {"subnet[1].assigned-nas": [[3, "2026-01-01 00:00:00.0"]],
              "subnet[1].total-nas": [[4096, "2026-01-01 00:00:00.0"]]}
    assert dhcp.lease_counts(cfg, stats6, 6) == [{"interface": "lan0", "subnet": "2001:db8:1::/64",
                                                  "assigned": 3, "total": 4096}]


def test_status_of_a_kea_that_does_not_answer(cfg, tmp_path):
    s = dhcpsvc.status(cfg, "fw1", str(tmp_path / "none.sock"), socket6_path=str(tmp_path / "none6.sock"))
    assert s["enabled"] and not s["running"] and "does not answer" in s["error"]
    assert not s["v6"]["running"] and "kea-dhcp6 does not answer" in s["v6"]["error"]
    assert dhcpsvc.status(configfile.load(ROOT / "docs/examples/cluster.toml", "fw1"), "fw1") == \
        {"enabled": False}


def test_ruleset_admits_dhcp_and_ha_from_peers_only(cfg):
    text = nft.render(cfg, "fw1", TEMPLATE).text
    assert 'iifname { "lan0" } udp dport 67 accept' in text
    assert 'iifname "sync0" ip saddr { 203.0.113.2 } tcp dport 8647 accept' in text
    assert 'iifname { "lan0" } ip6 saddr fe80::/10 udp sport 546 udp dport 547 accept' in text
    plain = nft.render(configfile.load(ROOT / "docs/examples/cluster.toml", "fw1"), "fw1", TEMPLATE).text
    assert "dport 67" not in plain and "8647" not in plain and "dport 547" not in plain


@pytest.mark.skipif(not shutil.which("nft"), reason="nft not installed")
def test_ruleset_with_dhcp_passes_nft_check(cfg):
    nft.check(nft.render(cfg, "fw1", TEMPLATE))
