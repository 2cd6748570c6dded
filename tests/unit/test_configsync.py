"""Config bundles: collection rules, validation as the receiving member, all-or-nothing install."""
import os
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
