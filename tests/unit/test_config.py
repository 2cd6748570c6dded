"""Config model: the shipped example loads; every bad input names file, key, reason."""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fwcluster import configfile
from fwcluster.core import config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "cluster.toml"
SHARED_EXAMPLE = ROOT.parent / "shared" / "examples" / "cluster.toml"
SPLIT = ROOT / "docs" / "examples" / "cluster-split.toml"  # two failover groups
STRONG = "Unit-test-passphrase-4wYq"


def test_docs_example_is_the_shared_contract():
    if SHARED_EXAMPLE.exists():
        assert EXAMPLE.read_text() == SHARED_EXAMPLE.read_text()


def test_example_loads_as_it_stands():
    cfg = configfile.load(EXAMPLE, node="fw1")
    assert cfg.name == "edge"
    assert [m.name for m in cfg.members] == ["fw1", "fw2"]
    assert [v.vhid for v in cfg.vips] == [1, 2, 3]
    assert cfg.vips[2].family == 6
    assert cfg.member("fw2").advskew == 100
    assert cfg.sync.port == 3780
    assert cfg.carp.preempt is True
    assert cfg.balance.mode == "active-standby"
    assert cfg.interfaces == ("lan0", "wan0")
    assert [p.name for p in cfg.peers("fw1")] == ["fw2"]


def _mutated(tmp_path, old, new, example=EXAMPLE):
    text = example.read_text()
    assert old in text
    p = tmp_path / "cluster.toml"
    p.write_text(text.replace(old, new, 1))
    return p


BAD = [
    ('port = 3780', 'port = 3780\nportt = 1', "sync.portt", "unknown key"),
    ('vhid = 2', 'vhid = 1', "vip[1].vhid", "duplicate vhid 1"),
    ('vhid = 2', 'vhid = 0', "vip[1].vhid", "outside 1-255"),
    ('vhid = 2', 'vhid = 256', "vip[1].vhid", "outside 1-255"),
    ('advskew = 100', 'advskew = 255', "member[1].advskew", "outside 0-254"),
    ('advskew = 100', 'advskew = -1', "member[1].advskew", "outside 0-254"),
    ('advbase = 1  ', 'advbase = 255', "vip[0].advbase", "outside 0-254"),
    ('advbase = 1  ', 'advbase = 0', "vip[0].advbase", "advbase 0 with member[0]"),
    ('address = "192.0.2.1/24"', 'address = "192.0.2.300/24"', "vip[0].address", "malformed address"),
    ('address = "192.0.2.1/24"', 'address = "192.0.2.1"', "vip[0].address", "prefix length"),
    ('sync_address = "203.0.113.2"', 'sync_address = "203.0.113.x"', "member[1].sync_address",
     "malformed address"),
    ('advbase = 1  ', 'advbase = "1"', "vip[0].advbase", "must be an integer"),
    ('[firewall]', '[firewal]', "firewal", "unknown table"),
    ('advbase = 1  ', 'mac = "vmac"\nadvbase = 1', "vip[0].mac", "not one of own, virtual"),
    ('advbase = 1  ', 'garp_refresh = 3601\nadvbase = 1', "vip[0].garp_refresh", "outside 0-3600"),
    ('advbase = 1  ', 'ra_interval = 10\nadvbase = 1', "vip[0].ra_interval", "link-local IPv6 vip"),
    ('advbase = 1  ', 'ra_interval = 1801\nadvbase = 1', "vip[0].ra_interval", "outside 0-1800"),
    ('port = 3780', 'port = 3780\nfilter = { states = "new" }', "sync.filter.states",
     "not one of sessions, all"),
    ('port = 3780', 'port = 3780\nfilter = { protocols = ["tcp", "ipx"] }', "sync.filter.protocols[1]",
     "not a protocol name"),
    ('port = 3780', 'port = 3780\nfilter = { protocols = [256] }', "sync.filter.protocols[0]",
     "not a protocol name"),
    ('port = 3780', 'port = 3780\nfilter = { ignore = ["192.0.2.0/33"] }', "sync.filter.ignore[0]",
     "not an address range"),
    ('port = 3780', 'port = 3780\nfilter = { ignor = [] }', "sync.filter.ignor", "unknown key"),
]


@pytest.mark.parametrize("old,new,key,reason", BAD, ids=[b[2] + ":" + b[3] for b in BAD])
def test_bad_config_names_file_key_reason(tmp_path, old, new, key, reason, example=EXAMPLE):
    p = _mutated(tmp_path, old, new, example)
    with pytest.raises(config.ConfigError) as ei:
        configfile.load(p)
    msg = str(ei.value)
    assert msg.startswith(str(p) + ": ")
    assert ei.value.key == key
    assert reason in msg
    assert "\n" not in msg


def test_not_a_member(tmp_path):
    with pytest.raises(config.ConfigError) as ei:
        configfile.load(EXAMPLE, node="fw9")
    assert ei.value.key == "--node" and "not a member" in str(ei.value)


def test_toml_syntax_error(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[cluster\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        configfile.load(p)


def test_secret_missing_and_world_readable(tmp_path):
    sec = tmp_path / "secret"
    p = _mutated(tmp_path, 'secret_file = "/etc/fwcluster/secret"', f'secret_file = "{sec}"')
    cfg = configfile.load(p, "fw1")
    with pytest.raises(config.ConfigError, match="does not exist"):
        configfile.secret(cfg)
    sec.write_text(f"{STRONG}\nignored\n")
    os.chmod(sec, 0o644)
    with pytest.raises(config.ConfigError, match="world-readable") as ei:
        configfile.secret(cfg)
    assert ei.value.key == "cluster.secret_file"
    os.chmod(sec, 0o600)
    assert configfile.secret(cfg) == STRONG.encode()


def test_every_key_is_documented():
    for table, keys in config._SCHEMA.items():
        for key in keys:
            assert f"{table}.{key}" in config.KEY_DOCS


@pytest.mark.parametrize("module", ["fwcluster.carpd", "syncd", "fwcluster.fwctl"])
def test_programs_exit_2_with_one_line_error(tmp_path, module):
    p = _mutated(tmp_path, 'vhid = 2', 'vhid = 1')
    args = [sys.executable, "-m", module, "--config", str(p), "--node", "fw1"]
    if module == "fwcluster.fwctl":
        args.append("status")
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 2, r.stderr
    assert f"{p}: vip[1].vhid: duplicate vhid 1" in r.stderr


def test_configuration_reference_is_current():
    from fwcluster.core import configref
    assert (ROOT / "docs" / "configuration.md").read_text() == configref.render(), \
        "docs/configuration.md is stale: run .venv/bin/python -m fwcluster.core.configref > docs/configuration.md"


def _secret_cfg(tmp_path, text: bytes, mode=0o600):
    sec = tmp_path / "secret"
    sec.write_bytes(text)
    os.chmod(sec, mode)
    p = _mutated(tmp_path, 'secret_file = "/etc/fwcluster/secret"', f'secret_file = "{sec}"')
    return configfile.load(p, "fw1"), sec


@pytest.mark.parametrize("text,mode,reason", [
    (b"s3cret\n", 0o600, "use at least 16"),
    (b"aaaaaaaaaaaaaaaaaaaaaaaa\n", 0o600, "too guessable"),
    (b"abcdefghijklmnop\n", 0o600, "too guessable"),
    (b"1234567890123456\n", 0o600, "too guessable"),
    (b"\n" + STRONG.encode(), 0o600, "is empty"),
    (STRONG.encode(), 0o602, "writable by group or others"),
    (STRONG.encode(), 0o620, "writable by group or others"),
    (STRONG.encode(), 0o604, "world-readable"),
])
def test_secret_refused(tmp_path, text, mode, reason):
    cfg, _ = _secret_cfg(tmp_path, text, mode)
    with pytest.raises(config.ConfigError, match=reason) as ei:
        configfile.secret(cfg)
    assert ei.value.key == "cluster.secret_file" and "\n" not in str(ei.value)


def test_secret_symlink_in_dirs_followed_final_symlink_refused(tmp_path):
    real = tmp_path / "config"
    real.mkdir()
    (real / "secret").write_text(STRONG + "\n")
    os.chmod(real / "secret", 0o600)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "secret").symlink_to(real / "secret")  # the image's /etc/fwcluster/secret -> /config
    assert configfile.read_secret("c.toml", str(etc / "secret")) == STRONG.encode()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(config.ConfigError, match="not a regular file"):
        configfile.read_secret("c.toml", str(fifo))  # and no hang: O_NONBLOCK


def test_secret_owner_must_be_euid(tmp_path):
    cfg, sec = _secret_cfg(tmp_path, STRONG.encode() + b"\n")
    os.chown(sec, os.geteuid() + 1, -1)
    with pytest.raises(config.ConfigError, match="is owned by uid"):
        configfile.secret(cfg)


# --- the passphrase estimate (zxcvbn) --------------------------------------------------

@pytest.mark.parametrize("text", [b"Password123!Password123!", b"abcdefghijklmnopqrstuvwxyz",
                                  b"1234567890123456789012345", b"qwertyuiopasdfghjklzxcvbnm",
                                  b"P@ssw0rdP@ssw0rd2024"])
def test_structured_weak_passphrases_refused(tmp_path, text):
    cfg, _ = _secret_cfg(tmp_path, text + b"\n")
    with pytest.raises(config.ConfigError, match="too guessable"):
        configfile.secret(cfg)


WEAK_KEY = b"passwordpassword1234" + b"Xk9-qT2_vLmZ8wRb4nPc"  # CARP v2 keys on the first 20


def test_compatible_mode_checks_the_bytes_carp_keys_on(tmp_path):
    cfg, _ = _secret_cfg(tmp_path, WEAK_KEY + b"\n")
    assert configfile.secret(cfg) == WEAK_KEY  # hardened (the default) keys on all of it
    p = tmp_path / "cluster.toml"
    p.write_text(p.read_text() + '\n[carp]\nmode = "compatible"\n')
    with pytest.raises(config.ConfigError, match="first 20 bytes"):
        configfile.secret(configfile.load(p, "fw1"))


# --- files the daemons read: regular, root's, never a blocked read ----------------------

def test_secret_that_is_a_directory_is_one_line(tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(config.ConfigError, match="is a directory"):
        configfile.read_secret("c.toml", str(tmp_path / "s"))


def test_config_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "cluster.toml"
    os.mkfifo(fifo)
    # a child, so that a blocking open on the old code fails the test instead of hanging it
    r = subprocess.run([sys.executable, "-c", "import sys; from fwcluster import configfile as c\n"
                        "try: c.load(sys.argv[1])\nexcept Exception as e: print(e)", str(fifo)],
                       capture_output=True, text=True, cwd=ROOT, timeout=20)
    assert "not a regular file" in r.stdout, (r.stdout, r.stderr)


def _site(tmp_path, mode_dir=0o755, mode_file=0o644):
    d = tmp_path / "site"
    d.mkdir()
    p = d / "cluster.toml"
    p.write_text(EXAMPLE.read_text())
    os.chmod(p, mode_file)
    os.chmod(d, mode_dir)
    return p


@pytest.mark.parametrize("mode_dir,mode_file,reason", [
    (0o775, 0o644, "directory .* is writable by group or others"),
    (0o757, 0o644, "directory .* is writable by group or others"),
    (0o1777, 0o644, "directory .* is writable by group or others"),
    (0o755, 0o664, "writable by group or others"),
    (0o755, 0o646, "writable by group or others"),
])
def test_config_modes_refused(tmp_path, mode_dir, mode_file, reason):
    p = _site(tmp_path, mode_dir, mode_file)
    with pytest.raises(config.ConfigError, match=reason):
        configfile.load(p, "fw1")


def test_config_owner_refused(tmp_path):
    p = _site(tmp_path)
    os.chown(p, os.geteuid() + 1, -1)
    with pytest.raises(config.ConfigError, match="owned by uid"):
        configfile.load(p, "fw1")


def test_secret_final_symlink_followed_only_from_a_trusted_place(tmp_path):
    real = tmp_path / "config"
    real.mkdir()
    (real / "secret").write_text(STRONG + "\n")
    os.chmod(real / "secret", 0o600)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone could have placed this link
    (shared / "secret").symlink_to(real / "secret")
    with pytest.raises(config.ConfigError, match="writable by group or others"):
        configfile.read_secret("c.toml", str(shared / "secret"))
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "secret").symlink_to(real / "secret")
    os.lchown(etc / "secret", os.geteuid() + 1, -1)  # a link someone else made
    with pytest.raises(config.ConfigError, match="symlink owned by uid"):
        configfile.read_secret("c.toml", str(etc / "secret"))
    (etc / "loop").symlink_to(etc / "loop")
    with pytest.raises(config.ConfigError, match="chain of more than"):
        configfile.read_secret("c.toml", str(etc / "loop"))
    (etc / "zero").symlink_to("/dev/zero")
    with pytest.raises(config.ConfigError, match="not a regular file"):
        configfile.read_secret("c.toml", str(etc / "zero"))


# --- [carp] mode: hardened unless a ucarp member needs compatible ---------------------------

def test_sync_filter_default_and_given(tmp_path):
    assert configfile.load(EXAMPLE).sync.filter == config.SyncFilter("sessions", (), ())
    p = _mutated(tmp_path, 'port = 3780', 'port = 3780\n[sync.filter]\nstates = "all"\n'
                 'protocols = ["tcp", 17, "udp"]\nignore = ["192.0.2.77/24", "2001:db8:5::/48"]')
    assert configfile.load(p).sync.filter == config.SyncFilter(
        "all", (6, 17), ("192.0.2.0/24", "2001:db8:5::/48"))


def test_carp_mode_is_hardened_unless_said():
    assert configfile.load(EXAMPLE, "fw1").carp.mode == "hardened"  # the example has no [carp]


@pytest.mark.parametrize("mode", ["hardened", "compatible"])
def test_config_check_warns_about_compatible_mode(tmp_path, mode):
    sec = tmp_path / "secret"
    sec.write_text("Xk9-qT2_vLmZ8wRb4nPc\n")
    os.chmod(sec, 0o600)
    (tmp_path / "ruleset.nft.j2").write_text("table inet fwcheck { }\n")
    p = tmp_path / "cluster.toml"
    p.write_text(EXAMPLE.read_text().replace("/etc/fwcluster/secret", str(sec))
                 .replace("/etc/fwcluster/ruleset.nft.j2", str(tmp_path / "ruleset.nft.j2"))
                 + f'\n[carp]\nmode = "{mode}"\n')
    r = subprocess.run([sys.executable, "-m", "fwcluster.fwctl", "--config", str(p), "--node", "fw1",
                        "config", "check"], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: [carp] mode is compatible")]
    assert len(warned) == (1 if mode == "compatible" else 0)


def test_virtual_mac_and_refresh_per_vip(tmp_path):
    p = _mutated(tmp_path, 'advbase = 1  ', 'mac = "virtual"\ngarp_refresh = 10\nadvbase = 1')
    cfg = configfile.load(p)
    assert (cfg.vips[0].mac, cfg.vips[0].garp_refresh) == ("virtual", 10)
    assert (cfg.vips[1].mac, cfg.vips[1].garp_refresh) == ("own", 0)  # opt-in


def test_virtual_mac_is_not_for_active_active(tmp_path):
    text = EXAMPLE.read_text().replace('advbase = 1  ', 'mac = "virtual"\nadvbase = 1', 1)
    p = tmp_path / "cluster.toml"
    p.write_text(text + '\n[balance]\nmode = "active-active"\nbuckets = 4\n')
    with pytest.raises(config.ConfigError) as ei:
        configfile.load(p)
    assert ei.value.key == "vip[0].mac" and "active-active" in str(ei.value)


# --- failover groups ([[group]], vip.group) ------------------------------------


def test_without_groups_one_default_group_as_before():
    cfg = configfile.load(EXAMPLE, node="fw1")
    assert [g.name for g in cfg.groups] == ["default"]
    g = cfg.groups[0]
    assert (g.preempt, g.preempt_delay) == (True, 0.0)
    assert g.advskew == (("fw1", 0), ("fw2", 100))
    assert {v.group for v in cfg.vips} == {"default"}


def test_split_example_two_groups_each_member_preferred_in_one():
    cfg = configfile.load(SPLIT, node="fw1")
    left, right = cfg.groups
    assert (left.name, right.name) == ("left", "right")
    assert (left.skew("fw1"), left.skew("fw2")) == (0, 100)
    assert (right.skew("fw1"), right.skew("fw2")) == (100, 0)
    assert left.preempt and left.preempt_delay == 10.0
    assert [v.group for v in cfg.vips] == ["left", "left", "right", "right"]
    assert cfg.group_index("right") == 1


GROUP_BAD = [
    ('group = "right"', 'group = "rihgt"', "vip[2].group", "no [[group]] named"),
    ('name = "right"', 'name = "left"', "group[1].name", "duplicate group name"),
    ('{fw1 = 100, fw2 = 0}', '{fw1 = 100, fw3 = 0}', "group[1].advskew.fw3", "not a member"),
    ('{fw1 = 100, fw2 = 0}', '{fw1 = 255, fw2 = 0}', "group[1].advskew.fw1", "outside 0-254"),
    ('{fw1 = 100, fw2 = 0}', '{fw1 = "1", fw2 = 0}', "group[1].advskew.fw1", "must be an integer"),
    ('preempt_delay = 10       #', 'preempt_delay = -1       #', "group[0].preempt_delay",
     "outside 0-3600"),
    ('group = "right"\nmac = "virtual"', 'group = "right"', "vip[2].mac", "must be \"virtual\""),
    ('group = "right"\nmac = "virtual"\n\n[[vip]]\nvhid = 4\ninterface = "wan0"\n'
     'address = "198.51.100.2/24"\ngroup = "right"',
     'group = "left"\nmac = "virtual"\n\n[[vip]]\nvhid = 4\ninterface = "wan0"\n'
     'address = "198.51.100.2/24"\ngroup = "left"', "group[1]", "no vip is in group"),
    ('[firewall]', '[balance]\nmode = "active-active"\nbuckets = 4\n\n[firewall]', "group",
     "active-standby"),
]


@pytest.mark.parametrize("old,new,key,reason", GROUP_BAD)
def test_bad_groups_name_the_key(tmp_path, old, new, key, reason):
    test_bad_config_names_file_key_reason(tmp_path, old, new, key, reason, SPLIT)


def test_group_mark_bits():
    assert config.group_of_mark(0) == 0
    assert config.group_of_mark(0x0100_00ff) == 1
    assert config.group_of_mark(0xf0ff_ffff) == 0
    assert config.MAX_GROUPS == (config.GROUP_MARK_MASK >> config.GROUP_MARK_SHIFT) + 1


def _helpers(text: str):
    base = (ROOT / "docs" / "examples" / "cluster.toml").read_text()
    return config.parse(tomllib.loads(base.replace("[firewall]", f"[firewall]\nhelpers = {text}", 1)),
                        "cluster.toml")


def test_firewall_helpers_default_ports_and_names():
    cfg = _helpers('[{ protocol = "ftp" }, { protocol = "sip" }, { protocol = "ftp", port = 2121 }]')
    assert [(h.protocol, h.port, h.transport, h.name) for h in cfg.firewall.helpers] == [
        ("ftp", 21, "tcp", "ftp_21"), ("sip", 5060, "udp", "sip_5060"), ("ftp", 2121, "tcp", "ftp_2121")]


@pytest.mark.parametrize("text,key,reason", [
    ('[{ protocol = "tftp" }]', "firewall.helpers[0].protocol", "is not one of ftp, sip"),
    ('[{ port = 21 }]', "firewall.helpers[0].protocol", "is not one of ftp, sip"),
    ('[{ protocol = "ftp", port = 0 }]', "firewall.helpers[0].port", "1"),
    ('[{ protocol = "ftp", port = 70000 }]', "firewall.helpers[0].port", "65535"),
    ('[{ protocol = "ftp", port = "21" }]', "firewall.helpers[0].port", "is not a port number"),
    ('[{ protocol = "ftp", port = true }]', "firewall.helpers[0].port", "is not a port number"),
    ('[{ protocol = "ftp", ports = 21 }]', "firewall.helpers[0].ports", "unknown key"),
    ('["ftp"]', "firewall.helpers[0]", "is not an inline table"),
    ('[{ protocol = "sip" }, { protocol = "sip", port = 5060 }]', "firewall.helpers[1]", "duplicate"),
])
def test_firewall_helpers_refused_naming_the_key(text, key, reason):
    with pytest.raises(config.ConfigError) as ei:
        _helpers(text)
    assert f": {key}: " in str(ei.value) and reason in str(ei.value)
