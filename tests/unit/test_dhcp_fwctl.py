"""fwctl dhcp and the dhcp line of fwctl status; the metric families."""
import json
import subprocess
import sys
from pathlib import Path

from fwcluster import metrics
from fwcluster.fwctl import dhcp as fwdhcp
from tests.prom_text import key, samples as prom_parse

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "cluster-dhcp.toml"
CONTRACT = ROOT / "docs" / "examples" / "cluster.toml"


def fwctl(config, *argv):
    return subprocess.run([sys.executable, "-m", "fwcluster.fwctl", "--config", str(config),
                           "--node", "fw1", *argv], capture_output=True, text=True, cwd=ROOT, timeout=30)


def test_enabled_is_the_units_condition():
    assert fwctl(EXAMPLE, "dhcp", "enabled").returncode == 0
    assert fwctl(CONTRACT, "dhcp", "enabled").returncode == 1
    # kea-dhcp6's condition: some table has pools6
    assert fwctl(EXAMPLE, "dhcp", "enabled6").returncode == 0
    assert fwctl(CONTRACT, "dhcp", "enabled6").returncode == 1


def test_status_off_and_not_running():
    off = fwctl(CONTRACT, "dhcp", "--json")
    assert off.returncode == 0 and json.loads(off.stdout) == {"enabled": False}
    down = fwctl(EXAMPLE, "dhcp")  # no Kea answers on this machine's appliance socket
    assert down.returncode == 1, down.stderr
    assert down.stdout.startswith("dhcp: primary, Kea NOT running")


RUNNING = {"enabled": True, "node": "fw2", "mode": "hot-standby", "role": "standby", "running": True,
           "state": "partner-down", "partner_role": "primary", "partner_state": "hot-standby",
           "partner_age": 12, "subnets": [{"interface": "lan0", "subnet": "192.0.2.0/24",
                                                   "assigned": 3, "total": 50}]}


def test_status_line():
    assert fwdhcp.line({"enabled": False}) == "dhcp: off"
    assert fwdhcp.line(RUNNING) == ("dhcp: hot-standby standby partner-down; partner primary "
                                    "hot-standby (heard 12s ago); leases lan0 3/50")
    assert fwdhcp.healthy(RUNNING) and not fwdhcp.healthy({**RUNNING, "state": "waiting"})
    assert not fwdhcp.healthy({**RUNNING, "running": False})


def test_status_line_with_dhcpv6():
    v6 = {"running": True, "role": "standby", "state": "hot-standby", "partner_role": "primary",
          "partner_state": "hot-standby", "partner_age": 1,
          "subnets": [{"interface": "lan0", "subnet": "2001:db8:1::/64", "assigned": 2, "total": 4096}]}
    both = {**RUNNING, "v6": v6}
    assert fwdhcp.line(both).endswith("; v6: standby hot-standby; partner primary hot-standby "
                                      "(heard 1s ago); leases lan0 2/4096")
    assert fwdhcp.healthy(both)
    down = {**RUNNING, "v6": {"running": False, "error": "kea-dhcp6 does not answer"}}
    assert not fwdhcp.healthy(down), "a configured kea-dhcp6 that does not answer is a problem"
    assert fwdhcp.line(down).endswith("; v6: standby, Kea NOT running (kea-dhcp6 does not answer)")


def test_a_full_lease_file_system_is_a_problem(tmp_path):
    """Kea answers no grant it cannot write (tests/lab/test_dhcp_ha.py): a
    nearly full /config makes fwctl dhcp say so and exit 1."""
    from fwcluster import dhcpsvc
    leases = tmp_path / "l.csv"
    leases.write_text("address\n")
    room = dhcpsvc.lease_file(str(leases))
    assert room["lease_file_bytes"] == 8 and room["lease_space_free"] > 0
    full = {**RUNNING, "lease_space_free": 0, "problem": dhcpsvc.core.lease_space_problem(0)}
    assert not fwdhcp.healthy(full)
    assert fwdhcp.line(full).endswith("; PROBLEM: lease file system full (0 KiB free): Kea answers "
                                      "no grant or renewal it cannot write; free space on /config")


def test_metric_families():
    text = metrics.render(metrics.dhcp_families(RUNNING, "edge"))
    samples = prom_parse(text)
    assert samples[key("fwcluster_dhcp_enabled", cluster="edge", node="fw2")] == 1
    assert samples[key("fwcluster_dhcp_kea_up")] == 1
    assert samples[key("fwcluster_dhcp_ha_state", state="partner-down")] == 1
    assert samples[key("fwcluster_dhcp_ha_state", state="hot-standby")] == 0
    assert samples[key("fwcluster_dhcp_partner_state", state="hot-standby")] == 1
    assert samples[key("fwcluster_dhcp_leases", interface="lan0")] == 3
    assert samples[key("fwcluster_dhcp_pool_addresses", interface="lan0")] == 50
    space = prom_parse(metrics.render(metrics.dhcp_families({**RUNNING, "lease_space_free": 4096}, "edge")))
    assert space[key("fwcluster_dhcp_lease_space_bytes")] == 4096
    off = prom_parse(metrics.render(metrics.dhcp_families({"enabled": False}, "edge")))
    assert list(off.values()) == [0]
    assert not any(name.startswith("fwcluster_dhcp6_") for name, _ in samples), "no v6 without pools6"
    v6 = {"running": False, "subnets": [{"interface": "lan0", "assigned": None, "total": 4096}]}
    both = prom_parse(metrics.render(metrics.dhcp_families({**RUNNING, "v6": v6}, "edge")))
    assert both[key("fwcluster_dhcp6_kea_up")] == 0 and both[key("fwcluster_dhcp_kea_up")] == 1
    assert both[key("fwcluster_dhcp6_pool_addresses", interface="lan0")] == 4096


def test_kea_follows_every_file_its_configuration_comes_from():
    """fwctl dhcp render reads cluster.toml and the secret (the HA password
    is derived from it): fwcluster-dhcp.path watches both where the image
    keeps them (config-setup's /config layout), so a new secret reaches Kea."""
    text = (ROOT / "overlays/cluster/usr/lib/systemd/system/fwcluster-dhcp.path").read_text()
    watched = {line.split("=", 1)[1].strip() for line in text.splitlines()
               if line.startswith("PathChanged=")}
    layout = (ROOT / "overlays/base/usr/lib/fwcluster/config-setup").read_text()
    for path in ("/config/cluster.toml", "/config/secret"):
        assert path in layout and path in watched
