"""Config model: the shipped example loads; every bad input names file, key, reason."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fwcluster import configfile
from fwcluster.core import config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "cluster.toml"
SHARED_EXAMPLE = ROOT.parent / "shared" / "examples" / "cluster.toml"
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


def _mutated(tmp_path, old, new):
    text = EXAMPLE.read_text()
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
]


@pytest.mark.parametrize("old,new,key,reason", BAD, ids=[b[2] + ":" + b[3] for b in BAD])
def test_bad_config_names_file_key_reason(tmp_path, old, new, key, reason):
    p = _mutated(tmp_path, old, new)
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
    (b"aaaaaaaaaaaaaaaaaaaaaaaa\n", 0o600, "different characters"),
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



# --- [carp] mode: hardened unless a ucarp member needs compatible ---------------------------

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
