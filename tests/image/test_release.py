"""`make release` builds only a release: a tag on a clean tree, the
production key, and a CHANGELOG.md entry naming the protocol versions."""
from __future__ import annotations

from pathlib import Path

from fwcluster.core import versions
from image.release import changelog_entry, release_problems

ROOT = Path(__file__).resolve().parents[2]
PROTOCOLS = {"sync": "2", "config": "FWCC1"}
ENTRY = "# Changelog\n\n## 0.3.0 (2027-01-01)\n\nProtocols: sync 2, config FWCC1.\n\n## 0.2.0\n\nold\n"


def test_a_tagged_clean_signed_release_with_its_entry_passes():
    assert release_problems("0.3.0", "production", ENTRY, PROTOCOLS) == []


def test_past_the_tag_dirty_or_untagged_is_not_a_release():
    for v in ("0.3.0.post2+gabc", "0.3.0+gabc.dirty", "0.0.0+gabc"):
        assert any("is not a release" in p for p in release_problems(v, "production", ENTRY, PROTOCOLS))


def test_the_development_key_is_refused():
    assert any("production signing key" in p
               for p in release_problems("0.3.0", "development", ENTRY, PROTOCOLS))


def test_the_entry_must_exist_and_name_each_protocol_version():
    assert any("no '## 0.4.0' entry" in p for p in release_problems("0.4.0", "production", ENTRY, PROTOCOLS))
    missing = release_problems("0.3.0", "production", ENTRY, dict(PROTOCOLS, carp="2"))
    assert missing == ["CHANGELOG.md's 0.3.0 entry does not say it speaks carp 2"]
    assert changelog_entry(ENTRY, "0.2.0").strip() == "old"


def test_the_changelog_entry_of_this_release_names_what_this_code_speaks():
    """The newest entry of CHANGELOG.md is the release this tree makes (or
    made): it must state this code's protocol versions."""
    text = (ROOT / "CHANGELOG.md").read_text()
    newest = next(line[3:].split()[0] for line in text.splitlines() if line.startswith("## "))
    assert release_problems(newest, "production", text) == []
