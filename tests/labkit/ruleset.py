"""Every lab member runs the shipped ruleset: the template of the appliance
(overlays/cluster/etc/fwcluster/ruleset.nft.j2) rendered by fwcluster.nft for
that member from the lab's cluster.toml and applied as `fwctl rules apply`
does. The lab writes a site copy of the template in which only the
site-policy lines differ -- the template is meant to be edited per site --
so the rules themselves are the ones an appliance loads."""
from __future__ import annotations

import re
from pathlib import Path

from fwcluster import configfile, nft
from tests.labkit.netns import LabError, in_netns

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "overlays" / "cluster" / "etc" / "fwcluster" / "ruleset.nft.j2"


def site_policy(snat: bool) -> dict[str, str]:
    """The lab's values of the template's site-policy knobs (jinja2 text).
    New flows only LAN -> WAN; with snat the LAN leaves with the WAN vip of
    its family as source, so replies reach whichever member holds the vip.
    IPv6 needs no knob: the template's rules follow the vips' families."""
    return {"forward_new": '[("lan0", "wan0")]',
            "snat_to_vip": '["wan0"]' if snat else "[]"}


def write_site_template(dest: Path, snat: bool) -> Path:
    """The shipped template with the lab's site policy, written to dest."""
    text = TEMPLATE.read_text()
    for name, value in site_policy(snat).items():
        line = re.compile(rf"^\{{%-? *set {name} = .*%\}}$", re.M)
        text, n = line.subn(lambda _m: f"{{%- set {name} = {value} %}}", text)
        if n != 1:  # the template's knobs changed: the lab must follow them
            raise LabError(f"{TEMPLATE}: expected one site-policy line 'set {name} = ...', found {n}")
    dest.write_text(text)
    return dest


def apply(ns: str, config_path: Path, member: str, run_dir: Path) -> None:
    """Render [firewall] template of config_path for member and replace the
    ruleset of namespace ns with it, in one transaction (fwcluster.nft)."""
    try:
        rendered = nft.render(configfile.load(config_path, member), member)
        in_netns(ns, lambda: nft.apply(rendered, run_dir=str(run_dir)))
    except (nft.RulesetError, configfile.ConfigError) as e:
        raise LabError(f"{member}: ruleset: {e}") from None
