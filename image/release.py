"""`make release`: the image and its signed bundle of a tagged release,
under the release's version (build/release/<version>/).

A release is a tag vX.Y.Z on a clean tree, signed with the production key,
with its entry in CHANGELOG.md (the protocol versions it speaks and, if one
changed, the upgrade procedure). release_problems() says what is missing;
the build itself is image/build.py's.
"""
from __future__ import annotations

import re

from fwcluster.core import versions


def changelog_entry(changelog: str, version: str) -> str | None:
    """The text of CHANGELOG.md's `## <version>` section, None if there is none."""
    m = re.search(rf"^## \[?{re.escape(version)}\]?(?:[ \t][^\n]*)?\n(.*?)(?=^## |\Z)", changelog,
                  re.M | re.S)
    return m.group(1) if m else None


def release_problems(version: str, signing_kind: str, changelog: str,
                     protocols: dict[str, str] | None = None) -> list[str]:
    """Why this build is not a release (empty: it is)."""
    problems = []
    if "+" in version or ".post" in version or version.startswith("0.0.0"):
        problems.append(f"version {version} is not a release: tag the commit (git tag vX.Y.Z) "
                        "and commit every change first")
    if signing_kind != "production":
        problems.append("no production signing key: give SIGNING_KEY=... SIGNING_CERT=... "
                        "(DEVELOPMENT=1 to make a development-signed release anyway)")
    entry = changelog_entry(changelog, version)
    if entry is None:
        problems.append(f"CHANGELOG.md has no '## {version}' entry")
    else:
        for name, v in (protocols or versions.protocols()).items():
            if not re.search(rf"\b{re.escape(name)}\b[^\n]*\b{re.escape(v)}\b", entry):
                problems.append(f"CHANGELOG.md's {version} entry does not say it speaks {name} {v}")
    return problems
