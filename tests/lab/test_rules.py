"""fwctl rules check/diff/apply against the real kernel, in a namespace of
the test's own: apply is atomic, and a broken template or rule leaves the
running ruleset exactly as it was, with an error naming the template line.
Also the owned-bucket set: replaced atomically, carried over by apply."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "overlays" / "cluster" / "etc" / "fwcluster" / "ruleset.nft.j2"
PY = sys.executable

CONFIG = """
[cluster]
name = "rules"
secret_file = "{dir}/secret"
run_dir = "{dir}/run"
state_dir = "{dir}/state"
[sync]
interface = "sync0"
[[member]]
name = "fw1"
sync_address = "203.0.113.1"
[[member]]
name = "fw2"
sync_address = "203.0.113.2"
advskew = 100
[[member]]
name = "fw3"
sync_address = "2001:db8:3::3"
advskew = 150
[[vip]]
vhid = 1
interface = "lan0"
address = "192.0.2.1/24"
[[vip]]
vhid = 2
interface = "wan0"
address = "198.51.100.1/24"
[[vip]]
vhid = 3
interface = "lan0"
address = "2001:db8:1::1/64"
[balance]
mode = "{mode}"
buckets = {buckets}
[firewall]
template = "{template}"
"""


@pytest.fixture
def ns():
    name = f"fwrules{os.getpid()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def cluster(tmp_path):
    """Write cluster.toml (mode/buckets/template adjustable); returns a writer."""
    secret = tmp_path / "secret"
    secret.write_text("Lab-rules-passphrase-7kQz\n")
    secret.chmod(0o600)

    def write(mode="active-standby", buckets=0, template=TEMPLATE):
        path = tmp_path / "cluster.toml"
        path.write_text(CONFIG.format(dir=tmp_path, mode=mode, buckets=buckets, template=template))
        return path
    write()
    return write


def _in(ns: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT, **kw)


def _fwctl(ns: str, config: Path, *argv: str) -> tuple[int, dict]:
    cp = _in(ns, [PY, "-m", "fwcluster.fwctl", "--config", str(config), "--node", "fw1",
                  "rules", *argv, "--json"])
    return cp.returncode, json.loads(cp.stdout)


def _ruleset(ns: str) -> str:
    return _in(ns, ["nft", "list", "ruleset"]).stdout


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = TEMPLATE.read_text()
    assert old in text
    path = tmp_path / "broken.nft.j2"
    path.write_text(text.replace(old, new, 1))
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_check_apply_diff_roundtrip(ns, cluster, tmp_path):
    config = cluster()
    rc, res = _fwctl(ns, config, "check")
    assert (rc, res["ok"]) == (0, True)
    assert _ruleset(ns) == ""  # check changes nothing

    rc, res = _fwctl(ns, config, "diff")
    assert rc == 1 and res["changed"] and "+table inet fwcluster {" in res["diff"]

    rc, res = _fwctl(ns, config, "apply")
    assert (rc, res["applied"]) == (0, True)
    running = _ruleset(ns)
    assert "chain forward" in running and "policy drop" in running

    rc, res = _fwctl(ns, config, "diff")
    assert (rc, res["changed"], res["diff"]) == (0, False, "")

    # Counters that have counted are not drift.
    counting = _broken(tmp_path, "type filter hook output priority filter; policy accept;",
                       "type filter hook output priority filter; policy accept;\n\t\tcounter")
    assert _fwctl(ns, config, "apply", "--template", str(counting))[0] == 0
    _in(ns, ["ip", "link", "set", "lo", "up"])
    _in(ns, [PY, "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                       ".sendto(b'x', ('127.0.0.1', 9))"])
    assert "counter packets 0 " not in _ruleset(ns).split("chain output")[1]
    assert _fwctl(ns, config, "diff", "--template", str(counting))[1]["changed"] is False
    assert _fwctl(ns, config, "apply")[0] == 0

    # An edited template shows up as exactly that edit.
    rule = 'iifname {{ ([inside] + vmacs.get(inside, [])) | nft_ifnames }} oifname "{{ outside }}"'
    edited = _broken(tmp_path, rule + ' ct state new accept', rule + ' tcp dport 443 ct state new accept')
    rc, res = _fwctl(ns, config, "diff", "--template", str(edited))
    assert rc == 1
    changed = [line for line in res["diff"].splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == ['-\t\tiifname "lan0" oifname "wan0" ct state new accept',
                       '+\t\tiifname "lan0" oifname "wan0" tcp dport 443 ct state new accept']


@pytest.mark.parametrize("case", ["nft-syntax", "kernel-rejects", "template-undefined"])
def test_a_broken_template_or_rule_leaves_the_old_ruleset(case, ns, cluster, tmp_path):
    config = cluster()
    assert _fwctl(ns, config, "apply")[0] == 0
    before = _ruleset(ns)
    if case == "nft-syntax":
        bad = _broken(tmp_path, "ct state invalid drop", "ct state invalid dorp")
        needle = "dorp"
    elif case == "kernel-rejects":
        # Valid nft, refused by the kernel only at commit (a jump loop):
        # the flush and every table before it in the batch are rolled back.
        bad = _broken(tmp_path, "\tchain output {",
                      "\tchain loop_a {\n\t\tjump loop_b\n\t}\n\tchain loop_b {\n\t\tjump loop_a\n\t}\n"
                      "\tchain output {\n\t\tjump loop_a")
        needle = "jump loop_a"
    else:
        bad = _broken(tmp_path, "ct state invalid drop", "ct state invalid {{ verdict_for_invalid }}")
        needle = "verdict_for_invalid"
    rc, res = _fwctl(ns, config, "apply", "--template", str(bad))
    assert rc == 1 and res["ok"] is False
    assert res["template"] == str(bad)
    if case == "kernel-rejects":
        assert "jump loop_" in bad.read_text().splitlines()[res["line"] - 1]
    else:
        assert res["line"] == _line_of(bad, needle), res
    assert res["error"].startswith(f"{bad}:{res['line']}: ")
    assert _ruleset(ns) == before


def test_owned_buckets_are_replaced_atomically_and_survive_apply(ns, cluster, tmp_path):
    config = cluster(mode="active-active", buckets=12)
    assert _fwctl(ns, config, "apply")[0] == 0
    # The run directory fwctl locks too (cluster.toml's run_dir), named
    # explicitly: argv[0] of `python -c` is "-c", a directory in the cwd.
    run_dir = str(tmp_path / "run")
    script = ("import sys, json; from fwcluster import nft\n"
              "for arg in sys.argv[2:]:\n"
              "    nft.set_owned_buckets(json.loads(arg), run_dir=sys.argv[1])\n"
              "print(json.dumps(sorted(nft.owned_buckets())))")
    cp = _in(ns, [PY, "-c", script, run_dir, "[1, 4, 7]", "[0, 3, 6, 9]"])
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout) == [0, 3, 6, 9]
    assert "elements = { 0, 3, 6, 9 }" in _ruleset(ns)

    # A re-apply keeps the owned set; diff does not count it as drift.
    rc, res = _fwctl(ns, config, "apply")
    assert (rc, res["owned_buckets"]) == (0, [0, 3, 6, 9])
    assert _fwctl(ns, config, "diff")[1]["changed"] is False
    # Fewer buckets: the ones that no longer exist are dropped.
    config = cluster(mode="active-active", buckets=5)
    assert _fwctl(ns, config, "apply")[1]["owned_buckets"] == [0, 3]

    # An empty set is valid (this member owns nothing).
    cp = _in(ns, [PY, "-c", script, run_dir, "[]"])
    assert json.loads(cp.stdout) == []


def test_set_owned_buckets_without_the_set_is_a_clear_error(ns, cluster):
    config = cluster()  # active-standby: no owned set in the ruleset
    assert _fwctl(ns, config, "apply")[0] == 0
    cp = _in(ns, [PY, "-c", "from fwcluster import nft\n"
                            "assert nft.owned_buckets() is None\n"
                            "try:\n    nft.set_owned_buckets({1})\n"
                            "except nft.RulesetError as e:\n    print(e)"])
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith("cannot update set inet fwcluster owned_buckets:")


def test_check_of_a_broken_rule_exits_1_and_changes_nothing(ns, cluster, tmp_path):
    config = cluster()
    bad = _broken(tmp_path, "ct state established,related accept", "ct state establised accept")
    rc, res = _fwctl(ns, config, "check", "--template", str(bad))
    assert rc == 1 and res["line"] == _line_of(bad, "establised")
    assert _ruleset(ns) == ""


pytestmark = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
