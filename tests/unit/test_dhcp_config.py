"""[[dhcp]] and [dhcp_ha]: the example loads with its defaults, and every
bad input (overlapping pools, pools outside the subnet, reservations outside
the pools, a pool bound that keeps the lease file small) is one line naming
file, key and reason."""
from pathlib import Path

import pytest

from fwcluster import configfile
from fwcluster.core import config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "cluster-dhcp.toml"
CONTRACT = ROOT / "docs" / "examples" / "cluster.toml"


def test_example_loads_with_vip_defaults():
    cfg = configfile.load(EXAMPLE, node="fw1")
    (d,) = cfg.dhcp
    assert d.interface == "lan0" and str(d.subnet) == "192.0.2.0/24"
    assert [(str(a), str(b)) for a, b in d.pools] == [("192.0.2.100", "192.0.2.199")]
    assert str(d.router) == "192.0.2.1" and [str(x) for x in d.dns] == ["192.0.2.1"]
    assert d.reservations[0] == config.Reservation("02:00:00:00:00:10",
                                                   config.ipaddress.IPv4Address("192.0.2.110"), "printer")
    assert cfg.dhcp_ha == config.DhcpHa("hot-standby", 8647, 3)
    assert str(d.subnet6) == "2001:db8:1::/64" and [str(x) for x in d.dns6] == ["2001:db8:1::1"]
    assert [(str(a), str(b)) for a, b in d.pools6] == [("2001:db8:1::1000", "2001:db8:1::1fff")]


def test_pools6_are_optional(tmp_path):
    cfg = _load(tmp_path, POOL6, "")
    assert cfg.dhcp[0].pools6 == () and cfg.dhcp[0].subnet6 is None


def test_contract_example_has_no_dhcp():
    cfg = configfile.load(CONTRACT, node="fw1")
    assert cfg.dhcp == () and cfg.dhcp_ha == config.DhcpHa()


def _load(tmp_path, old, new):
    text = EXAMPLE.read_text()
    assert old in text, old
    p = tmp_path / "cluster.toml"
    p.write_text(text.replace(old, new, 1))
    return configfile.load(p)


POOL = 'pools = ["192.0.2.100-192.0.2.199"]'
POOL6 = 'pools6 = ["2001:db8:1::1000-2001:db8:1::1fff"]'
RES = '{mac = "02:00:00:00:00:10", ip = "192.0.2.110", hostname = "printer"}'
BAD = [
    (POOL, 'pools = ["192.0.2.100-192.0.2.150", "192.0.2.150-192.0.2.160"]', "dhcp[0].pools[1]",
     "overlaps dhcp[0].pools[0]"),
    (POOL, 'pools = ["192.0.2.100-192.0.2.199", "192.0.2.128/26"]', "dhcp[0].pools[1]", "overlaps"),
    (POOL, 'pools = ["192.0.2.100-192.0.3.10"]', "dhcp[0].pools[0]", "outside 192.0.2.0/24"),
    (POOL, 'pools = ["198.51.100.10-198.51.100.20"]', "dhcp[0].pools[0]", "outside 192.0.2.0/24"),
    (POOL, 'pools = ["192.0.2.1-192.0.2.50"]', "dhcp[0].pools[0]", "holds the vip 192.0.2.1"),
    (POOL, 'pools = ["192.0.2.128/25"]', "dhcp[0].pools[0]", "broadcast address"),
    (POOL, 'pools = ["192.0.2.199-192.0.2.100"]', "dhcp[0].pools[0]", "first address after the last"),
    (POOL, 'pools = ["192.0.2.100"]', "dhcp[0].pools[0]", "neither"),
    (POOL, 'pools = []', "dhcp[0].pools", "at least one pool"),
    (RES, '{mac = "02:00:00:00:00:10", ip = "192.0.2.50"}', "dhcp[0].reservations[0].ip",
     "outside the pools"),
    (RES, '{mac = "02:00:00:00:00:10", ip = "198.51.100.7"}', "dhcp[0].reservations[0].ip",
     "outside the pools"),
    (RES, '{mac = "02-00-00-00-00-10", ip = "192.0.2.110"}', "dhcp[0].reservations[0].mac",
     "not a MAC address"),
    (RES, '{mac = "02:00:00:00:00:10", ip = "192.0.2.110"}, {mac = "02:00:00:00:00:10", ip = "192.0.2.111"}',
     "dhcp[0].reservations[1].mac", "also in dhcp[0].reservations[0]"),
    (RES, '{mac = "02:00:00:00:00:10", ip = "192.0.2.110"}, {mac = "02:00:00:00:00:11", ip = "192.0.2.110"}',
     "dhcp[0].reservations[1].ip", "also in dhcp[0].reservations[0]"),
    (RES, '{mac = "02:00:00:00:00:10", addr = "192.0.2.110"}', "dhcp[0].reservations[0].addr",
     "unknown key"),
    (RES, '{mac = "02:00:00:00:00:10"}', "dhcp[0].reservations[0].ip", "missing required key"),
    ('interface = "lan0"\npools', 'interface = "wan1"\npools', "dhcp[0].interface", "carries no IPv4"),
    ('lease_time = 3600', 'lease_time = 10', "dhcp[0].lease_time", "outside 60-604800"),
    ('domain = "example.org"', 'domain = "bad domain"', "dhcp[0].domain", "neither"),
    ('lease_time = 3600', 'router = "198.51.100.1"', "dhcp[0].router", "outside 192.0.2.0/24"),
    ('lease_time = 3600', 'dns = ["2001:db8::53"]', "dhcp[0].dns[0]", "not an IPv4 address"),
    ('mode = "hot-standby"', 'mode = "active"', "dhcp_ha.mode", "not one of"),
    ('port = 8647', 'port = 3780', "dhcp_ha.port", "is the sync port"),
    ('partner_down = 3 ', 'partner_down = 1 ', "dhcp_ha.partner_down", "outside 2-60"),
    (POOL, 'pools = ["192.0.2.0/24"]', "dhcp[0].pools[0]", "holds the vip"),
    (POOL6, 'pools6 = ["2001:db8:2::1000-2001:db8:2::1fff"]', "dhcp[0].pools6[0]",
     "outside 2001:db8:1::/64"),
    (POOL6, 'pools6 = ["2001:db8:1::/120"]', "dhcp[0].pools6[0]", "holds the vip 2001:db8:1::1"),
    (POOL6, 'pools6 = ["2001:db8:1::-2001:db8:1::"]', "dhcp[0].pools6[0]", "subnet-router anycast"),
    (POOL6, 'pools6 = ["2001:db8:1::1000-2001:db8:1::1fff", "2001:db8:1::1f00/120"]',
     "dhcp[0].pools6[1]", "overlaps dhcp[0].pools6[0]"),
    (POOL6, 'pools6 = ["192.0.2.100-192.0.2.120"]', "dhcp[0].pools6[0]", "not an IPv6 address"),
    (POOL6, 'pools6 = ["2001:db8:1::/48"]', "dhcp[0].pools6[0]", "outside 2001:db8:1::/64"),
    (POOL6, 'dns6 = ["2001:db8:1::53"]', "dhcp[0].dns6", "without pools6"),
    (POOL6, POOL6 + '\ndns6 = ["192.0.2.53"]', "dhcp[0].dns6[0]", "not an IPv6 address"),
    ('interface = "lan0"\naddress = "2001:db8:1::1/64"', 'interface = "wan0"\naddress = "2001:db8:1::1/64"',
     "dhcp[0].pools6", "carries no IPv6 [[vip]]"),
]


@pytest.mark.parametrize("old,new,key,reason", BAD, ids=[b[2] + ":" + b[3] for b in BAD])
def test_bad_dhcp_names_file_key_reason(tmp_path, old, new, key, reason):
    with pytest.raises(config.ConfigError) as ei:
        _load(tmp_path, old, new)
    assert ei.value.key == key, str(ei.value)
    assert reason in str(ei.value)
    assert "\n" not in str(ei.value)


def test_second_interface_pools_may_not_overlap_the_first(tmp_path):
    more = ('\n[[vip]]\nvhid = 4\ninterface = "lan1"\naddress = "192.0.2.2/24"\n'
            '[[dhcp]]\ninterface = "lan1"\npools = ["192.0.2.190-192.0.2.210"]\n')
    with pytest.raises(config.ConfigError) as ei:
        _load(tmp_path, "[dhcp_ha]", more + "[dhcp_ha]")
    assert ei.value.key == "dhcp[1].pools[0]"
    assert "overlaps dhcp[0].pools[0]" in str(ei.value)


def test_one_table_per_interface(tmp_path):
    with pytest.raises(config.ConfigError) as ei:
        _load(tmp_path, "[dhcp_ha]", '[[dhcp]]\ninterface = "lan0"\npools = ["192.0.2.220-192.0.2.230"]\n'
              "[dhcp_ha]")
    assert ei.value.key == "dhcp[1].interface" and "already has dhcp[0]" in str(ei.value)


def test_pools6_count_towards_the_bound(tmp_path):
    with pytest.raises(config.ConfigError) as ei:
        _load(tmp_path, POOL6, 'pools6 = ["2001:db8:1::1:0/112"]')
    assert ei.value.key == "dhcp" and f"at most {config.MAX_DHCP_ADDRESSES}" in str(ei.value)


def test_pool_total_is_bounded(tmp_path):
    vip = 'address = "192.0.2.1/24"'
    text = EXAMPLE.read_text().replace(vip, 'address = "10.0.0.1/8"', 1).replace(
        POOL, 'pools = ["10.1.0.0/16"]').replace(RES, '{mac = "02:00:00:00:00:10", ip = "10.1.0.10"}')
    p = tmp_path / "big.toml"
    p.write_text(text)
    with pytest.raises(config.ConfigError) as ei:
        configfile.load(p)
    assert ei.value.key == "dhcp" and f"at most {config.MAX_DHCP_ADDRESSES}" in str(ei.value)
