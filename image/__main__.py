"""python -m image build [--profile P] [--overlays "DIR ..."] [--out DIR] [--protocols previous]
   python -m image release [--profile P] [--development]
       (a tagged release: build/release/<version>/, see image/release.py)
   python -m image seed-config IMAGE DIR [--authorized-key FILE.pub ...]
       (put DIR's files on IMAGE's /config, and the keys in ssh/authorized_keys)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fwcluster import version as fwversion
from image import bundle
from image import profile as _profile
from image.build import SRC, BuildError, build, tree_dirty
from image.release import release_problems
from image.seed import seed_config


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m image")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the appliance image")
    b.add_argument("--profile", default=str(SRC / "image/profiles/default.toml"))
    b.add_argument("--overlays", default="", help="extra overlay directories (space-separated)")
    b.add_argument("--out", default=str(SRC / "build"), type=Path)
    b.add_argument("--no-compress", action="store_true", help="skip the .img.xz")
    b.add_argument("--config-dir", type=Path, help="pre-seed /config with this directory's files")
    b.add_argument("--protocols", default="current",
                   help="protocol cap: 'previous' speaks only the predecessor's protocol versions "
                        "(the version gets '+previous'; for the upgrade test)")
    r = sub.add_parser("release", help="build a tagged release into build/release/<version>/")
    r.add_argument("--profile", default=str(SRC / "image/profiles/default.toml"))
    r.add_argument("--development", action="store_true",
                   help="allow the development key (a test of the release procedure)")
    s = sub.add_parser("seed-config", help="replace an image's /config with a directory's files")
    s.add_argument("image", type=Path)
    s.add_argument("dir", type=Path)
    s.add_argument("--authorized-key", action="append", default=[], type=Path, metavar="FILE",
                   help="an ssh public key file for root's key-only ssh login "
                        "(/config/ssh/authorized_keys); may be repeated")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "seed-config":
            seed_config(args.image, args.dir, args.authorized_key)
            keys = f" and {len(args.authorized_key)} ssh key file(s)" if args.authorized_key else ""
            print(f"{args.image}: /config now holds the files of {args.dir}{keys}")
            return 0
        if args.cmd == "release":
            return release(args)
        prof = _profile.load(args.profile).with_overlays(args.overlays.split())
        r = build(prof, args.out, compress=not args.no_compress, config_dir=args.config_dir,
                  protocols=args.protocols)
    except (_profile.ProfileError, BuildError, bundle.SigningError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(r)
    return 0


def release(args) -> int:
    version = fwversion.from_git(SRC, dirty=tree_dirty())
    signing = bundle.signing_from_env(SRC / "build")
    problems = release_problems(version or "0.0.0", signing.kind, (SRC / "CHANGELOG.md").read_text())
    if args.development:
        problems = [p for p in problems if not p.startswith("no production signing key")]
    if problems:
        print("error: not a release:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    r = build(_profile.load(args.profile), SRC / "build" / "release" / version, version=version,
              signing=signing)
    report(r)
    print(f"release {version}: {r.bundle.name} is what members install (fwctl upgrade)")
    return 0


def report(r) -> None:
    print(f"image:    {r.image} ({r.image.stat().st_size // 2**20} MiB)")
    if r.image_xz:
        print(f"xz:       {r.image_xz} ({r.image_xz.stat().st_size / 2**20:.1f} MiB)")
    if r.bundle:
        print(f"bundle:   {r.bundle} ({r.bundle.stat().st_size / 2**20:.1f} MiB, {r.signing}-signed)")
        if r.signing == "development":
            print("WARNING: DEVELOPMENT-SIGNED image and bundle (build/rauc-dev/): not for production")
    print(f"sha256:   {r.sha256}")
    print(f"manifest: {r.manifest}")
    print(f"root slot free: {100 * r.root_free_fraction:.1f}%")


if __name__ == "__main__":
    sys.exit(main())
