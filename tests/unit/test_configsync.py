"""Config bundles: collection rules, validation as the receiving member, all-or-nothing install."""
import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from fwcluster import configfile
from fwcluster import configstore
from fwcluster.core import bundle, config
from fwcluster.core.bundle import Bundle, BundleError

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "cluster.toml"


@pytest.fixture
def site(tmp_path):
    d = tmp_path / "etc"
    d.mkdir()
    secret = d / "secret"
    secret.write_text("Unit-test-passphrase-4wYq\n")
    os.chmod(secret, 0o600)
    text = EXAMPLE.read_text().replace("/etc/fwcluster/secret", str(secret)) \
        .replace("/etc/fwcluster/ruleset.nft.j2", str(d / "ruleset.nft.j2"))
    (d / "cluster.toml").write_text(text)
    (d / "ruleset.nft.j2").write_text("table inet fw { }\n")
    (d / "hosts.allow").write_text("ALL\n")
    return d


def test_collect_and_roundtrip(site):
    cfg = configfile.load(site / "cluster.toml", "fw1")
    b = configstore.collect(cfg, ["hosts.allow"], generation=3, origin="fw1")
    assert sorted(b.files) == ["cluster.toml", "hosts.allow", "ruleset.nft.j2"]
    again = Bundle.from_json(b.to_json())
    assert again.digest == b.digest and again.generation == 3


def test_secret_and_outside_files_are_never_collected(site, tmp_path):
    cfg = configfile.load(site / "cluster.toml", "fw1")
    with pytest.raises(BundleError, match="never pushed"):
        configstore.collect(cfg, ["secret"])
    with pytest.raises(BundleError, match="not beside the config"):
        configstore.collect(cfg, ["/etc/passwd"])


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", ""])
def test_unsafe_names_refused(name):
    with pytest.raises(BundleError):
        Bundle.from_json({"files": {"cluster.toml": "", name: ""}, "config_name": "cluster.toml"})


def test_install_invalid_changes_nothing(site):
    cfg = configfile.load(site / "cluster.toml", "fw1")
    good = configstore.collect(cfg)
    before = {p.name: p.read_bytes() for p in site.iterdir()}
    bad = dict(good.files, **{"cluster.toml": good.files["cluster.toml"].replace(b"vhid = 2", b"vhid = 1")})
    with pytest.raises(BundleError, match=r"vip\[1\]\.vhid: duplicate vhid 1"):
        configstore.install(Bundle(bad, "cluster.toml", 4), str(site / "cluster.toml"), "fw2",
                           cfg.secret_file)
    assert {p.name: p.read_bytes() for p in site.iterdir()} == before


def test_install_validates_as_receiving_member(site):
    cfg = configfile.load(site / "cluster.toml", "fw1")
    b = configstore.collect(cfg)
    with pytest.raises(BundleError, match="not a member"):
        configstore.install(b, str(site / "cluster.toml"), "fw9", cfg.secret_file)


def test_failed_apply_restores_previous_files(site):
    cfg = configfile.load(site / "cluster.toml", "fw1")
    b = configstore.collect(cfg)
    new = dict(b.files, **{"ruleset.nft.j2": b"table inet fw { chain x { } }\n"})
    seen = []

    def check(cfg, node):
        seen.append(Path(cfg.firewall.template).read_bytes())  # the staged copy is checked

    def apply(cfg, node):
        raise RuntimeError("kernel said no")
    with pytest.raises(RuntimeError):
        configstore.install(Bundle(new, "cluster.toml", 5), str(site / "cluster.toml"), "fw2",
                           cfg.secret_file, check_ruleset=check, apply_ruleset=apply)
    assert seen == [b"table inet fw { chain x { } }\n"]
    assert (site / "ruleset.nft.j2").read_text() == "table inet fw { }\n"
    assert not [p for p in site.iterdir() if p.name.startswith(".")]


def test_install_success_reports_changed(site):
    cfg = configfile.load(site / "cluster.toml", "fw1")
    b = configstore.collect(cfg)
    new = dict(b.files, **{"ruleset.nft.j2": b"# v2\n"})
    r = configstore.install(Bundle(new, "cluster.toml", 6), str(site / "cluster.toml"), "fw2",
                           cfg.secret_file)
    assert r["changed"] == ["ruleset.nft.j2"] and (site / "ruleset.nft.j2").read_text() == "# v2\n"


def test_generation_persists_and_staleness(tmp_path):
    g = configstore.Generation(7, "abc", "fw1", 1.0)
    g.save(str(tmp_path))
    assert configstore.Generation.load(str(tmp_path)) == g
    assert bundle.stale(g.generation, {"fw2": {"generation": 8}, "fw3": {"generation": 7}}) == ["fw2"]


def test_diff_bundles():
    a = Bundle({"cluster.toml": b"a\n"}, "cluster.toml")
    b = Bundle({"cluster.toml": b"b\n"}, "cluster.toml")
    text = bundle.diff_bundles(a, b, "fw2")
    assert "-a" in text and "+b" in text and "fw2/cluster.toml" in text
    assert bundle.diff_bundles(a, a, "fw2") == ""


@pytest.mark.parametrize("name", ["secret", "node", "root-password", "hostname", "mysecret"])
def test_receiver_refuses_member_local_files(site, name):
    """Whatever the sender does: a crafted bundle with a member-local file."""
    cfg = configfile.load(site / "cluster.toml", "fw1")
    b = configstore.collect(cfg)
    before = {p.name: p.read_bytes() for p in site.iterdir()}
    with pytest.raises(BundleError, match="member-local"):
        configstore.install(Bundle(dict(b.files, **{name: b"x\n"}), "cluster.toml", 9),
                            str(site / "cluster.toml"), "fw2", str(site / "mysecret"))
    assert {p.name: p.read_bytes() for p in site.iterdir()} == before


def test_receiver_refuses_another_config_name(site):
    cfg = configfile.load(site / "cluster.toml", "fw1")
    b = configstore.collect(cfg)
    other = {"other.toml" if n == "cluster.toml" else n: d for n, d in b.files.items()}
    with pytest.raises(BundleError, match="this member's is 'cluster.toml'"):
        configstore.install(Bundle(other, "other.toml", 9), str(site / "cluster.toml"), "fw2",
                            cfg.secret_file)


def _image_layout(tmp_path):
    """The appliance: /etc/fwcluster on a read-only root holds the template and
    links into /config (image/customize.py CONFIG_LINKS)."""
    config, etc = tmp_path / "config", tmp_path / "etc" / "fwcluster"
    config.mkdir()
    etc.mkdir(parents=True)
    (config / "secret").write_text("Unit-test-passphrase-4wYq\n")
    os.chmod(config / "secret", 0o600)
    text = EXAMPLE.read_text().replace("/etc/fwcluster/secret", str(etc / "secret")) \
        .replace("/etc/fwcluster/ruleset.nft.j2", str(etc / "ruleset.nft.j2"))
    (config / "cluster.toml").write_text(text)
    (config / "node").write_text("fw2\n")
    for name in ("cluster.toml", "secret", "node"):
        (etc / name).symlink_to(config / name)
    (etc / "ruleset.nft.j2").write_text("table inet fw { }\n")
    return config, etc


@contextlib.contextmanager
def read_only(d):
    """d as a read-only bind mount (the appliance's root), undone on exit."""
    subprocess.run(["mount", "--bind", str(d), str(d)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(d)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_install_on_symlinked_layout_stages_beside_real_files(tmp_path):
    config, etc = _image_layout(tmp_path)
    with read_only(etc):
        cfg = configfile.load(etc / "cluster.toml", "fw1")
        b = configstore.collect(cfg)
        new = dict(b.files, **{"cluster.toml": b.files["cluster.toml"].replace(b"advskew = 100",
                                                                                b"advskew = 50")})
        r = configstore.install(Bundle(new, "cluster.toml", 2), str(etc / "cluster.toml"), "fw2",
                                cfg.secret_file)
        assert r["changed"] == ["cluster.toml"]
        assert (etc / "cluster.toml").is_symlink()  # the link survives and shows the new file
        assert b"advskew = 50" in (etc / "cluster.toml").read_bytes()
        assert sorted(p.name for p in etc.iterdir()) == ["cluster.toml", "node", "ruleset.nft.j2",
                                                         "secret"]
        assert sorted(p.name for p in config.iterdir()) == ["cluster.toml", "node", "secret"]


def test_install_spread_over_two_directories_refused(tmp_path):
    config, etc = _image_layout(tmp_path)
    with read_only(etc):
        cfg = configfile.load(etc / "cluster.toml", "fw1")
        b = configstore.collect(cfg)
        new = dict(b.files, **{"cluster.toml": b.files["cluster.toml"] + b"\n",
                               "ruleset.nft.j2": b"# v2\n"})
        with pytest.raises(BundleError, match="more than one directory") as ei:
            configstore.install(Bundle(new, "cluster.toml", 2), str(etc / "cluster.toml"), "fw2",
                                cfg.secret_file)
        assert "ruleset.nft.j2 in " + str(etc) in str(ei.value)
        assert (etc / "ruleset.nft.j2").read_text() == "table inet fw { }\n"
