"""The namespace lab: a whole cluster on one kernel, for the lab tests, the
benchmarks and `make demo`. Test tooling: never part of the appliance.

    lab.py        namespaces, links, cluster.toml, daemons, faults
    ruleset.py    the shipped ruleset template, rendered and applied per member
    prober.py     ICMP echo probes with reply timestamps
    reaper.py     teardown of what a lab left: processes, stale namespaces
    netns.py      running code and ip(8) batches inside a namespace
    addresses.py  the lab's documentation-range addresses
    ftpserver.py, ftpclient.py  a minimal FTP server and an ftplib client (helpers)
    demo.py       `python -m tests.labkit demo` (make demo)

See docs/lab.md.
"""
from tests.labkit.addresses import (CLIENT4, CLIENT6, LAN_VIP4, LAN_VIP6, SERVER4, SERVER6,
                                    SYNC_PORT, WAN_VIP4, WAN_VIP6, default_vips, member_addr4,
                                    member_addr6)
from tests.labkit.lab import PY, REPO, Lab, LabError
from tests.labkit.prober import Prober
from tests.labkit.reaper import cleanup_stale

__all__ = ["CLIENT4", "CLIENT6", "LAN_VIP4", "LAN_VIP6", "SERVER4", "SERVER6", "SYNC_PORT",
           "WAN_VIP4", "WAN_VIP6", "default_vips", "member_addr4", "member_addr6", "PY", "REPO",
           "Lab", "LabError", "Prober", "cleanup_stale"]
