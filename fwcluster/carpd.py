"""fwcluster-carpd: CARP v2 virtual-address failover for one cluster member.

    python -m fwcluster.carpd --config C --node N [--run-dir D] [--state-dir S]
                              [--log-level info|debug|warning]

Runs in the foreground, logs to stderr. SIGTERM/SIGINT release the vips
(a master first sends a bow-out advert so the peer takes over at once).
SIGHUP reloads cluster.toml and the secret: vips that did not change keep
their role; a bad config is refused in one log line and the old one runs on.
Exit status: 0 after a clean stop, 2 on a config error, 1 on a fatal error.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from fwcluster.args import add_common_args, load_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fwcluster-carpd",
                                description="CARP v2 failover of the cluster's virtual addresses.")
    add_common_args(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


async def _run(daemon) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    # Live reload: cluster.toml and the secret again; vips kept keep their role.
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(daemon.reload()))
    await daemon.run()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg, node, secret = load_from_args(args, need_secret=True)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format=f"%(asctime)s carpd[{node}] %(levelname)s %(message)s")
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    if len(secret) > 20:
        logging.getLogger("carpd").warning(
            "passphrase is longer than 20 bytes: CARP uses only the first 20 (ucarp accepts at most 19)")
    from fwcluster.carp.node import Carpd  # after config checks: exit 2 fast on bad config
    try:
        asyncio.run(_run(Carpd(cfg, node, secret)))
    except PermissionError as e:
        print(f"error: {e} (carpd needs root or CAP_NET_RAW+CAP_NET_ADMIN)", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
