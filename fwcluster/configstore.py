"""Config bundles on disk: collecting this member's, and the all-or-nothing
install of a received one (the bundle itself is fwcluster.core.bundle).

A bundle is cluster.toml, the ruleset template and any named files that live
beside cluster.toml (flat names only). The secret never travels. A receiving
member stages every file in a scratch directory, validates the staged copy as
itself (config model with its own --node, template render, `nft -c`), and only
then renames the files into place; if a rename or the ruleset apply fails, the
previous files are put back, so a member ends with the old bundle or the new
one, never a mix.

On the appliance /etc/fwcluster is on the read-only root and its files are
symlinks into /config: staging happens in the directory where the real files
live (the links resolved), so the renames are atomic on that file system and
the links keep pointing at the new files. A bundle whose changed files would
land in more than one directory is refused.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from fwcluster import configfile
from fwcluster.core.bundle import MEMBER_LOCAL, Bundle, BundleError, check_names, check_receivable
from fwcluster.core import config as _config


def _beside(cfg_path: Path, path: str, what: str) -> str:
    cfg_dir = cfg_path.parent
    p = Path(path)
    if not p.is_absolute():
        p = cfg_dir / p
    # Beside the config's name (/etc/fwcluster) or its real file (/config).
    homes = {cfg_dir.resolve(), cfg_path.resolve().parent}
    if p.parent.resolve() not in homes:
        raise BundleError(f"{what} {path} is not beside the config in {cfg_dir}; "
                          "only files in that directory can be pushed")
    if p.name in MEMBER_LOCAL:
        raise BundleError(f"{p.name} is a member-local file; it is never pushed")
    return p.name


def collect(cfg: _config.Config, names: list[str] = (), *, generation: int = 0,
            origin: str = "") -> Bundle:
    """The local bundle: cluster.toml, its template, and the named extra files."""
    cfg_path = Path(cfg.path)
    cfg_dir = cfg_path.parent
    secret = Path(cfg.secret_file).name  # whatever directory it is in: receivers refuse the name
    wanted = [cfg_path.name]
    if cfg.firewall.template:
        wanted.append(_beside(cfg_path, cfg.firewall.template, "[firewall] template"))
    for n in names:
        wanted.append(_beside(cfg_path, n, "file"))
    files = {}
    for name in wanted:
        if name == secret:
            raise BundleError(f"{name} is the cluster secret; it is never pushed")
        try:
            files[name] = targets(cfg.path, [name])[name].read_bytes()
        except OSError as e:
            raise BundleError(f"cannot read {cfg_dir / name}: {e.strerror}") from None
    b = Bundle(files, cfg_path.name, generation, origin, time.time())
    check_names(b)
    return b


def targets(config_path: str, names) -> dict[str, Path]:
    """Where each file really lives (symlinks resolved); a new file goes
    beside the real config file."""
    cfg_dir = Path(config_path).parent
    home = Path(os.path.realpath(config_path)).parent
    return {n: Path(os.path.realpath(cfg_dir / n)) if os.path.lexists(cfg_dir / n) else home / n
            for n in names}


def staging_dir(config_path: str, where: dict[str, Path]) -> Path:
    """The one directory every changed file lives in (that of the config if
    nothing changed); refuses a bundle spread over several."""
    dirs = sorted({str(p.parent) for p in where.values()})
    if len(dirs) > 1:
        spread = ", ".join(f"{n} in {p.parent}" for n, p in sorted(where.items()))
        raise BundleError(f"changed files live in more than one directory ({spread}); a bundle "
                          "installs into one: keep them beside the real cluster.toml")
    return Path(dirs[0]) if dirs else Path(os.path.realpath(config_path)).parent


def validate_staged(stage: Path, b: Bundle, node: str, secret_file: str,
                    check_ruleset) -> _config.Config:
    """Validate the staged copy as member `node`; returns its config."""
    path = stage / b.config_name
    try:
        cfg = configfile.parse_bytes(b.files[b.config_name], str(path), node)
        # The secret stays this member's own; the new config must still name it.
        configfile.secret(cfg)
    except _config.ConfigError as e:
        raise BundleError(str(e)) from None
    tmpl = cfg.firewall.template
    if tmpl and Path(tmpl).name in b.files:
        cfg = dataclasses.replace(cfg, firewall=dataclasses.replace(cfg.firewall,
                                                                   template=str(stage / Path(tmpl).name)))
    if check_ruleset is not None:
        check_ruleset(cfg, node)
    return cfg


def install(b: Bundle, config_path: str, node: str, secret_file: str, *,
            check_ruleset=None, apply_ruleset=None) -> dict:
    """Validate and install a bundle beside config_path, all or nothing.

    check_ruleset(cfg, node) raises on a bad template; apply_ruleset(cfg, node)
    loads it into the kernel after the files are in place. Returns a summary.
    """
    check_receivable(b, Path(config_path).name, Path(secret_file).name)
    cfg_dir = Path(config_path).parent
    where = targets(config_path, b.files)
    changed = [n for n, d in sorted(b.files.items())
               if not where[n].is_file() or where[n].read_bytes() != d]
    home = staging_dir(config_path, {n: where[n] for n in changed})
    try:
        stage = Path(tempfile.mkdtemp(prefix=".incoming-", dir=home))
        backup = Path(tempfile.mkdtemp(prefix=".previous-", dir=home))
    except OSError as e:
        raise BundleError(f"cannot stage in {home}: {e.strerror}") from None
    moved: list[str] = []
    try:
        for name, data in b.files.items():
            (stage / name).write_bytes(data)
        try:
            validate_staged(stage, b, node, secret_file, check_ruleset)
        except Exception as e:
            # Name the operator's file, not the scratch copy.
            raise BundleError(str(e).replace(str(stage), str(cfg_dir))) from None
        try:
            for name in changed:
                target = where[name]
                if target.exists():
                    shutil.copy2(target, backup / name)
                    os.chmod(stage / name, target.stat().st_mode & 0o777)
                os.replace(stage / name, target)
                moved.append(name)
            if apply_ruleset is not None:
                cfg = configfile.load(config_path, node)
                apply_ruleset(cfg, node)
        except Exception:
            for name in moved:  # put the previous bundle back
                if (backup / name).exists():
                    os.replace(backup / name, where[name])
                else:
                    os.unlink(where[name])
            raise
        return {"changed": changed, "digest": b.digest, "generation": b.generation}
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(backup, ignore_errors=True)


@dataclasses.dataclass
class Generation:
    """This member's config generation, kept in {state_dir}/config-generation.json."""
    generation: int = 0
    digest: str = ""
    origin: str = ""
    time: float = 0.0

    @classmethod
    def load(cls, state_dir: str) -> "Generation":
        try:
            obj = json.loads((Path(state_dir) / "config-generation.json").read_text())
            return cls(int(obj["generation"]), str(obj["digest"]), str(obj.get("origin", "")),
                       float(obj.get("time", 0)))
        except (OSError, ValueError, KeyError, TypeError):
            return cls()

    def save(self, state_dir: str) -> None:
        d = Path(state_dir)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / ".config-generation.json.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(self)))
        os.replace(tmp, d / "config-generation.json")
