"""carpd's live reload plan (pure): what is kept, added, removed, refused."""
from __future__ import annotations

import tomllib

from fwcluster.carp.core import reloadplan
from fwcluster.core import config

BASE = """
[cluster]
name = "lab"
secret_file = "/etc/fwcluster/secret"
[sync]
interface = "sync0"
[[member]]
name = "fw1"
sync_address = "203.0.113.1"
advskew = {skew}
[[member]]
name = "fw2"
sync_address = "203.0.113.2"
advskew = 100
[[vip]]
vhid = 1
interface = "lan0"
address = "192.0.2.1/24"
[[vip]]
vhid = 2
interface = "wan0"
address = "{wan}"
{extra}
"""


def cfg(skew=0, wan="198.51.100.1/24", extra=""):
    return config.parse(tomllib.loads(BASE.format(skew=skew, wan=wan, extra=extra)), "c.toml", "fw1")


def test_unchanged_config_keeps_everything():
    p = reloadplan.plan(cfg(), cfg(), "fw1", b"k", b"k")
    assert (p.added, p.removed, p.kept, p.changes) == ((), (), (1, 2), False)


def test_a_new_vip_is_added_and_the_others_kept():
    extra = '[[vip]]\nvhid = 5\ninterface = "lan0"\naddress = "192.0.2.5/24"\n'
    p = reloadplan.plan(cfg(), cfg(extra=extra), "fw1", b"k", b"k")
    assert (p.added, p.removed, p.kept) == ((5,), (), (1, 2))


def test_a_changed_vip_is_removed_and_added_again():
    p = reloadplan.plan(cfg(), cfg(wan="198.51.100.2/24"), "fw1", b"k", b"k")
    assert (p.added, p.removed, p.kept) == ((2,), (2,), (1,))


def test_new_skew_and_secret_reach_the_kept_machines():
    p = reloadplan.plan(cfg(), cfg(skew=50), "fw1", b"k", b"k2")
    assert p.retime and p.rekey and p.kept == (1, 2) and not p.added


def test_refusals_name_the_reason():
    other = config.parse(tomllib.loads(BASE.format(skew=0, wan="198.51.100.1/24", extra="")
                                       .replace('"fw1"', '"fw9"')), "c.toml", "fw9")
    assert "no longer a member" in reloadplan.plan(cfg(), other, "fw1", b"k", b"k")
    hardened = '[carp]\nmode = "hardened"\n'
    assert "carp.mode" in reloadplan.plan(cfg(), cfg(extra=hardened), "fw1", b"k", b"k")
    aa = '[balance]\nmode = "active-active"\nbuckets = 4\n'
    assert "active-active" in reloadplan.plan(cfg(), cfg(extra=aa), "fw1", b"k", b"k")
    assert "active-active" in reloadplan.plan(cfg(extra=aa), cfg(extra=aa), "fw1", b"k", b"k2")
