"""ssh on the appliance, off the appliance: the host-key script run on a
directory standing in for /config/ssh, the sshd settings the image ships,
the ruleset's tcp/22 rule, and `seed-config --authorized-key` on a small
GPT disk. Logging in to booted members is in tests/vm/test_vm_ssh.py."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fwcluster import configfile, nft

ROOT = Path(__file__).resolve().parents[2]
SSH_KEYS = ROOT / "overlays/base/usr/lib/fwcluster/ssh-keys"
SSHD_CONF = ROOT / "overlays/base/etc/ssh/sshd_config.d/fwcluster.conf"
TEMPLATE = ROOT / "overlays/cluster/etc/fwcluster/ruleset.nft.j2"
EXAMPLE = ROOT / "docs/examples/cluster.toml"
HOST_KEYS = ("ssh_host_ed25519_key", "ssh_host_ecdsa_key")

needs_keygen = pytest.mark.skipif(not shutil.which("ssh-keygen"),
                                  reason="needs ssh-keygen (openssh-client: make image-deps)")


def ssh_keys(d: Path) -> str:
    p = subprocess.run(["sh", str(SSH_KEYS), str(d)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@needs_keygen
def test_host_keys_made_once_then_kept(tmp_path):
    d = tmp_path / "config" / "ssh"
    d.parent.mkdir()
    out = ssh_keys(d)
    assert out.count("new ssh host key") == 2
    first = snapshot(d)
    assert sorted(first) == sorted(HOST_KEYS + tuple(k + ".pub" for k in HOST_KEYS))
    for k in HOST_KEYS:
        assert (d / k).stat().st_mode & 0o777 == 0o600
    assert d.stat().st_mode & 0o777 == 0o700
    out = ssh_keys(d)  # the next boot
    assert "new ssh host key" not in out and snapshot(d) == first


@needs_keygen
def test_broken_key_is_made_anew_and_a_lost_pub_restored(tmp_path):
    d = tmp_path / "ssh"
    ssh_keys(d)
    first = snapshot(d)
    (d / "ssh_host_ecdsa_key").write_bytes(first["ssh_host_ecdsa_key"][:100])  # cut short
    (d / "ssh_host_ed25519_key.pub").unlink()
    out = ssh_keys(d)
    assert "ssh_host_ecdsa_key does not load" in out and out.count("new ssh host key") == 1
    now = snapshot(d)
    assert now["ssh_host_ed25519_key"] == first["ssh_host_ed25519_key"]
    assert now["ssh_host_ed25519_key.pub"].split()[:2] == first["ssh_host_ed25519_key.pub"].split()[:2]
    assert now["ssh_host_ecdsa_key"] != first["ssh_host_ecdsa_key"]
    assert not (d / ".new").exists()


@needs_keygen
def test_missing_authorized_keys_says_how_to_add_one_and_modes_are_fixed(tmp_path):
    d = tmp_path / "ssh"
    out = ssh_keys(d)
    assert f"no {d}/authorized_keys, so nobody can log in" in out and "Remote access" in out
    ak = d / "authorized_keys"
    ak.write_text("ssh-ed25519 AAAA... a\n# comment\nssh-ed25519 AAAA... b\n")
    ak.chmod(0o666)
    d.chmod(0o777)
    out = ssh_keys(d)
    assert "2 authorized key(s)" in out
    assert ak.stat().st_mode & 0o777 == 0o600 and d.stat().st_mode & 0o777 == 0o700


def sshd_settings() -> dict[str, list[str]]:
    opts: dict[str, list[str]] = {}
    for line in SSHD_CONF.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split(None, 1)
            opts.setdefault(key.lower(), []).append(value)
    return opts


def test_sshd_is_key_only_root_only_with_host_keys_on_config():
    o = sshd_settings()
    assert o["authorizedkeysfile"] == ["/config/ssh/authorized_keys"]
    assert o["authenticationmethods"] == ["publickey"]
    for off in ("passwordauthentication", "kbdinteractiveauthentication", "permitemptypasswords",
                "x11forwarding", "permittunnel", "allowagentforwarding"):
        assert o[off] == ["no"], off
    assert o["permitrootlogin"] == ["prohibit-password"] and o["allowusers"] == ["root"]
    assert o["strictmodes"] == ["yes"]
    assert o["hostkey"] == [f"/config/ssh/{k}" for k in HOST_KEYS]
    # forwarding only to the member's own loopback, never through the firewall
    assert o["allowtcpforwarding"] == ["local"]
    assert all(dest.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "[::1]")
               for dest in o["permitopen"][0].split())


def test_ruleset_opens_ssh_on_the_management_interfaces_only():
    cfg = configfile.load(EXAMPLE, "fw1")
    lines = [ln.strip() for ln in nft.render(cfg, "fw1", str(TEMPLATE)).text.splitlines()]
    ssh = [ln for ln in lines if "dport 22 " in ln or "22," in ln or "22 }" in ln]
    assert ssh == [f'iifname {{ "{cfg.sync.interface}" }} tcp dport 22 accept'], ssh
    # nothing else in input accepts new tcp without naming an interface
    inp = lines[lines.index("chain input {"):]
    inp = inp[:inp.index("}")]
    assert [ln for ln in inp if "accept" in ln and "tcp" in ln and "iifname" not in ln] == []


def gpt_disk(path: Path) -> None:
    """A 48 MiB GPT disk with a 40 MiB partition named fwconfig."""
    with open(path, "wb") as f:
        f.truncate(48 << 20)
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(path)], text=True,
                   input="label: gpt\nunit: sectors\nstart=2048, size=81920, name=\"fwconfig\"\n",
                   check=True)


def seed(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "image", "seed-config", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def debugfs(fs: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(fs)], capture_output=True, text=True,
                          check=True).stdout


@needs_keygen
def test_seed_config_adds_authorized_keys(tmp_path):
    img = tmp_path / "disk.img"
    gpt_disk(img)
    cfg = tmp_path / "cfg"
    (cfg / "ssh").mkdir(parents=True)
    (cfg / "node").write_text("fw1\n")
    (cfg / "ssh/authorized_keys").write_text("# kept\n")
    keys = []
    for name in ("a", "b"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f",
                        str(tmp_path / name)], check=True)
        keys.append((tmp_path / f"{name}.pub").read_text().strip())
    p = seed(str(img), str(cfg), "--authorized-key", str(tmp_path / "a.pub"),
             "--authorized-key", str(tmp_path / "b.pub"))
    assert p.returncode == 0, p.stderr
    assert (cfg / "ssh/authorized_keys").read_text() == "# kept\n"  # the source is not changed
    fs = tmp_path / "config.ext4"
    subprocess.run(["dd", f"if={img}", f"of={fs}", "bs=1M", "skip=1", "count=40", "status=none"],
                   check=True)
    assert debugfs(fs, "cat /ssh/authorized_keys") == "# kept\n" + "".join(k + "\n" for k in keys)
    assert "Mode:  0600" in debugfs(fs, "stat /ssh/authorized_keys")
    assert "Mode:  0700" in debugfs(fs, "stat /ssh")
    assert debugfs(fs, "cat /node") == "fw1\n"


@needs_keygen
def test_seed_config_refuses_a_private_key_before_writing(tmp_path):
    img = tmp_path / "disk.img"
    gpt_disk(img)
    before = img.read_bytes()
    (tmp_path / "cfg").mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    p = seed(str(img), str(tmp_path / "cfg"), "--authorized-key", str(tmp_path / "k"))
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'k'}: line 1: not an ssh public key (give the .pub file)"]
    assert img.read_bytes() == before
