"""fwcluster-syncd / python -m syncd: conntrack state sync daemon."""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

from fwcluster.args import add_common_args, load_from_args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fwcluster-syncd",
        description="Replicate conntrack state to the other cluster members (authenticated, reliable).")
    add_common_args(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    cfg, node, secret = load_from_args(args, need_secret=True)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s syncd[{node}] %(levelname)s %(message)s")
    from syncd.daemon import Daemon  # after config: a config error needs no netlink
    # Fewer, later collections: at 10k entries/s the default thresholds run
    # the collector hundreds of times a second for objects that die young.
    gc.freeze()
    gc.set_threshold(50000, 50, 100)
    try:
        return asyncio.run(Daemon(cfg, node, secret).run())
    except PermissionError as e:
        print(f"error: {e} (syncd needs CAP_NET_ADMIN)", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
