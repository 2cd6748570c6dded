"""The live reload plan (pure), carpd's part: what is kept, added, removed, refused."""
from __future__ import annotations

import tomllib

from fwcluster.core import config, reloadplan

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
    p = reloadplan.plan(cfg(), cfg(), "fw1", False).carpd
    assert (p.added, p.removed, p.kept, p.changes) == ((), (), (1, 2), False)


def test_a_new_vip_is_added_and_the_others_kept():
    extra = '[[vip]]\nvhid = 5\ninterface = "lan0"\naddress = "192.0.2.5/24"\n'
    p = reloadplan.plan(cfg(), cfg(extra=extra), "fw1", False).carpd
    assert (p.added, p.removed, p.kept) == ((5,), (), (1, 2))


def test_a_changed_vip_is_removed_and_added_again():
    p = reloadplan.plan(cfg(), cfg(wan="198.51.100.2/24"), "fw1", False).carpd
    assert (p.added, p.removed, p.kept) == ((2,), (2,), (1,))


def test_new_skew_and_secret_reach_the_kept_machines():
    p = reloadplan.plan(cfg(), cfg(skew=50), "fw1", True).carpd
    assert p.retime and p.rekey and p.kept == (1, 2) and not p.added


def test_refusals_name_the_reason():
    other = config.parse(tomllib.loads(BASE.format(skew=0, wan="198.51.100.1/24", extra="")
                                       .replace('"fw1"', '"fw9"')), "c.toml", "fw9")
    assert "no longer a member" in reloadplan.plan(cfg(), other, "fw1", False)
    compatible = '[carp]\nmode = "compatible"\n'
    assert "carp.mode" in reloadplan.plan(cfg(), cfg(extra=compatible), "fw1", False)
    aa = '[balance]\nmode = "active-active"\nbuckets = 4\n'
    assert "active-active" in reloadplan.plan(cfg(), cfg(extra=aa), "fw1", False)
    assert "active-active" in reloadplan.plan(cfg(extra=aa), cfg(extra=aa), "fw1", True)


def test_reordered_members_are_no_change_for_either_daemon():
    a, b = cfg(), cfg()
    b = config.parse({**b.raw, "member": list(reversed(b.raw["member"]))}, "c.toml", "fw1")
    p = reloadplan.plan(a, b, "fw1", False)
    assert not p.carpd.changes and not p.syncd.new_run and p.syncd.summary() == []
    aa = '[balance]\nmode = "active-active"\nbuckets = 4\n'
    a = cfg(extra=aa)
    b = config.parse({**a.raw, "member": list(reversed(a.raw["member"]))}, "c.toml", "fw1")
    assert not isinstance(reloadplan.plan(a, b, "fw1", False), str)


def test_both_daemons_refuse_what_one_cannot_take():
    port = '[sync]\ninterface = "sync0"\nport = 3999\n'
    new = config.parse(tomllib.loads(BASE.format(skew=0, wan="198.51.100.1/24", extra="")
                                     .replace('[sync]\ninterface = "sync0"\n', port)), "c.toml", "fw1")
    assert "sync.port" in reloadplan.plan(cfg(), new, "fw1", False)


def test_a_new_vip_reaches_syncd_own_address_filter():
    extra = '[[vip]]\nvhid = 5\ninterface = "lan0"\naddress = "192.0.2.5/24"\n'
    assert reloadplan.plan(cfg(), cfg(extra=extra), "fw1", False).syncd.vips


def renamed(mode: str):
    text = BASE.format(skew=0, wan="198.51.100.1/24", extra=f'[carp]\nmode = "{mode}"\n')
    return (config.parse(tomllib.loads(text), "c.toml", "fw1"),
            config.parse(tomllib.loads(text.replace('name = "lab"', 'name = "lab2"')), "c.toml", "fw1"))


def test_a_cluster_rename_rekeys_both_daemons_in_hardened_mode():
    p = reloadplan.plan(*renamed("hardened"), "fw1", False)
    assert p.carpd.rekey and p.syncd.rekey and p.syncd.new_run


def test_a_cluster_rename_in_compatible_mode_rekeys_sync_only():
    p = reloadplan.plan(*renamed("compatible"), "fw1", False)   # CARP v2's key is the secret
    assert not p.carpd.rekey and p.syncd.rekey
