"""python -m image build [--profile P] [--overlays "DIR ..."] [--out DIR]
   python -m image seed-config IMAGE DIR [--authorized-key FILE.pub ...]
       (put DIR's files on IMAGE's /config, and the keys in ssh/authorized_keys)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from image import profile as _profile
from image.build import SRC, BuildError, build
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
        prof = _profile.load(args.profile).with_overlays(args.overlays.split())
        r = build(prof, args.out, compress=not args.no_compress, config_dir=args.config_dir)
    except (_profile.ProfileError, BuildError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
