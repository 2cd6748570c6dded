"""syncd.conntrack against the real kernel, in a namespace of its own."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab
NS = f"h4ct{os.getpid()}"
PY = sys.executable


@pytest.fixture(scope="module")
def ns():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", NS, "nft", "-f", "-"], check=True, text=True, input="""
table ip nat { chain post { type nat hook postrouting priority 100; }; }
table inet f { chain in { type filter hook input priority 0; ct state new accept; }; }
""")
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


def run_in_ns(ns, code: str) -> str:
    """Run a snippet in the namespace (netlink sockets are per namespace)."""
    r = subprocess.run(["ip", "netns", "exec", ns, PY, "-c", code], capture_output=True,
                       text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert r.returncode == 0, r.stderr
    return r.stdout


PRELUDE = """
import json, socket, time
from syncd.conntrack import Conntrack
from syncd.core.entry import Entry, OP_UPSERT, OP_DELETE
def show(e): return e._asdict() if e else None
"""


def test_insert_nat_entry_update_delete_and_own_events_are_marked(ns):
    out = run_in_ns(ns, PRELUDE + """
ct = Conntrack()
e = Entry(4, 6, 0, "192.0.2.100", "198.51.100.100", 40000, 80,
          "198.51.100.100", "198.51.100.1", 80, 61000, status=0x18e, timeout=3000,
          mark=7, tcp_state=3, wscale_orig=7, wscale_reply=6, flags_orig=0x23, flags_reply=0x33)
e6 = Entry(6, 17, 0, "2001:db8:1::100", "2001:db8:2::100", 5353, 53,
           "2001:db8:2::100", "2001:db8:1::100", 53, 5353, status=0xe, timeout=100)
ct.apply([(OP_UPSERT, e), (OP_UPSERT, e6)])
got = ct.get(e)
ct.apply([(OP_UPSERT, e._replace(mark=9, timeout=2000))])   # known key: update
got2 = ct.get(e)
ct.known.clear()
ct.apply([(OP_UPSERT, e._replace(mark=10))])                 # unknown key: create -> EEXIST -> update
got3 = ct.get(e)
n_dump = len(ct.dump())
time.sleep(0.1)
own = ct.read_events()
ct.apply([(OP_DELETE, e), (OP_DELETE, e)])                   # second delete: ENOENT, ignored
print(json.dumps({"got": show(got), "got2": show(got2), "mark3": got3.mark, "n": n_dump,
                  "left": [show(x) for x in ct.dump()], "own": len(own),
                  "stats": ct.stats, "err": ct.last_error}))
""")
    r = json.loads(out)
    g = r["got"]
    assert (g["rdst"], g["rdport"], g["rsrc"]) == ("198.51.100.1", 61000, "198.51.100.100")
    assert g["status"] & 0x10 and g["status"] & 0x4      # SRC_NAT set up by the kernel, ASSURED
    assert (g["mark"], g["tcp_state"], g["wscale_orig"], g["wscale_reply"]) == (7, 3, 7, 6)
    # Peers' TCP entries are committed with liberal window tracking (applyplan.replica).
    assert g["flags_orig"] == 0x23 | 0x08 and g["flags_reply"] == 0x33 | 0x08
    assert 2990 <= g["timeout"] <= 3000
    assert r["got2"]["mark"] == 9 and r["got2"]["timeout"] <= 2000 and r["mark3"] == 10
    assert r["n"] == 2 and r["own"] == 0, r
    assert r["stats"]["own_events"] == 0      # dropped in the kernel by the BPF filter
    assert [x["family"] for x in r["left"]] == [6]
    assert r["stats"]["failed"] == 0, r["err"]
    assert r["stats"]["created"] == 2 and r["stats"]["updated"] == 2 and r["stats"]["deleted"] == 1


def test_events_of_real_traffic(ns):
    out = run_in_ns(ns, PRELUDE + """
ct = Conntrack()
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0)); ls.listen()
c = socket.create_connection(ls.getsockname()); a, _ = ls.accept()
c.sendall(b"x"); a.recv(1); c.close(); a.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"x", ("127.0.0.1", 9))
time.sleep(0.2)
ev = ct.read_events()
print(json.dumps([(k, e.proto, e.tcp_state, e.odport) for k, e in ev]))
""")
    ev = json.loads(out)
    kinds = {(k, p) for k, p, _, _ in ev}
    assert ("new", 6) in kinds and ("update", 6) in kinds and ("new", 17) in kinds
    assert any(k == "update" and p == 6 and st == 3 for k, p, st, _ in ev)   # ESTABLISHED seen


def test_enobufs_is_reported_as_overrun(ns):
    out = run_in_ns(ns, PRELUDE + """
from syncd.conntrack import Overrun
ct = Conntrack(rcvbuf=4096)
ct.events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
w = Conntrack(events=False)
es = [Entry(4, 17, 0, "192.0.2.%d" % (i % 200 + 1), "198.51.100.100", 1000 + i, 53,
            "198.51.100.100", "192.0.2.%d" % (i % 200 + 1), 53, 1000 + i, timeout=60) for i in range(400)]
w.apply([(OP_UPSERT, e) for e in es])
try:
    ct.read_events()
    print("no-overrun")
except Overrun:
    print("overrun")
w.apply([(OP_DELETE, e) for e in es])
""")
    assert out.strip() == "overrun"


def test_bulk_modes_replace_and_keep_existing(ns):
    out = run_in_ns(ns, PRELUDE + """
ct = Conntrack(events=False)
e = Entry(4, 6, 0, "192.0.2.101", "198.51.100.100", 41000, 80, "198.51.100.100", "192.0.2.101",
          80, 41000, status=0xe, timeout=3000, mark=1, tcp_state=3)
n = e._replace(osport=41001, rdport=41001)
ct.apply([(OP_UPSERT, e)])
ct.apply([(OP_UPSERT, e._replace(mark=2)), (OP_UPSERT, n)], keep_existing=True)
kept = ct.get(e).mark
ct.apply([(OP_UPSERT, e._replace(mark=3))], replace=True)
replaced = ct.get(e).mark
print(json.dumps({"kept": kept, "replaced": replaced, "new": ct.get(n) is not None, "stats": ct.stats}))
ct.apply([(OP_DELETE, e), (OP_DELETE, n)])
""")
    r = json.loads(out)
    assert r["kept"] == 1 and r["new"] and r["replaced"] == 3, r
    assert r["stats"]["kept"] == 1 and r["stats"]["created"] == 3 and r["stats"]["failed"] == 0
