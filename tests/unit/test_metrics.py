"""The metrics helpers both daemons share: families collected through a real
prometheus_client registry and parsed back by its parser; the exposed names
and types are the documented ones; the textfile; where each daemon listens
and writes; the HTTP endpoint on real sockets, bounded (connections, request
size, time) and still serving after each abuse."""
import asyncio
import logging
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.prom_text import key, parser, samples
from fwcluster import metrics
from fwcluster.carp import metrics as carp_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from syncd import metrics as sync_metrics

ROOT = Path(__file__).resolve().parents[2]


def _families():
    state = GaugeMetricFamily("fwcluster_carp_state", "1 when the vhid is in this state",
                              labels=("vhid", "state"))
    state.add_metric(["1", "MASTER"], 1)
    state.add_metric(["1", "BACKUP"], 0)
    drops = CounterMetricFamily("fwcluster_carp_drops_total", "Dropped adverts by reason",
                                labels=("vhid", "reason"))
    drops.add_metric(["1", 'bad"hmac\\\n'], 3)
    return [state, drops, GaugeMetricFamily("fwcluster_sync_lag_seconds", "Lag", value=0.0125)]


def test_render_parses():
    text = metrics.render(_families())
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert fams["fwcluster_carp_state"].samples[0].labels == {"vhid": "1", "state": "MASTER"}
    assert fams["fwcluster_carp_drops"].samples[0].value == 3
    assert fams["fwcluster_carp_drops"].samples[0].labels["reason"] == 'bad"hmac\\\n'
    assert fams["fwcluster_sync_lag_seconds"].samples[0].value == 0.0125


def test_counters_keep_their_total_name():
    """The library takes _total off a counter family; the exposition puts it
    back on the TYPE line and the samples, so the names are today's."""
    text = metrics.render(_families())
    assert "# TYPE fwcluster_carp_drops_total counter\n" in text
    assert "# HELP fwcluster_carp_drops_total Dropped adverts by reason\n" in text
    assert re.search(r"^fwcluster_carp_drops_total\{", text, re.M)
    assert "_total_total" not in text and "_created" not in text


def test_collector_reads_the_status_at_each_collect():
    status = {"node": "fw1", "cluster": "edge", "maintenance": False}
    reg = metrics.registry(lambda: carp_metrics.families(status))
    assert reg.get_sample_value("fwcluster_carp_maintenance") == 0
    status["maintenance"] = True
    assert reg.get_sample_value("fwcluster_carp_maintenance") == 1


def _exposed(text: str) -> dict:
    """{family name: type} of a text's TYPE lines."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def _documented() -> dict:
    """{metric name: type} of docs/metrics.md's tables (a row may name two)."""
    out = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `fwcluster_") and len(cells) >= 2:
            for name in re.findall(r"`(fwcluster_\w+)`", cells[0]):
                out[name] = cells[1]
    return out


def test_every_family_is_documented_with_its_type():
    """What both daemons expose, every optional part present, is exactly
    what docs/metrics.md lists: names (counters with _total) and types."""
    carp = carp_metrics.families({"vips": [], "buckets": {"count": 1}})
    sync = sync_metrics.families({"config": {}})

    async def endpoint_families():
        server = await metrics.serve("127.0.0.1:0", lambda: "")
        server.close()
        return server.own_families()
    own = asyncio.run(endpoint_families())
    dhcp = metrics.dhcp_families({"enabled": True, "running": True, "state": "hot-standby",
                                  "subnets": [{"interface": "lan0", "assigned": 1, "total": 2}],
                                  "lease_space_free": 1 << 20,
                                  "v6": {"running": True, "state": "hot-standby",
                                         "subnets": [{"interface": "lan0", "assigned": 1, "total": 2}]}},
                                 "c")
    exposed = _exposed(metrics.render(carp + sync + own + dhcp))
    assert exposed == _documented()


def test_build_info_names_the_release_and_protocols_of_each_daemon():
    """fwcluster_build_info from each daemon's status "release": the same
    labels from both, the daemon label apart."""
    from fwcluster import version
    from fwcluster.core import versions
    release = version.release()
    text = metrics.render(carp_metrics.families({"vips": [], "release": release})
                          + sync_metrics.families({"release": release}))
    samples = [s for fam in text_string_to_metric_families(text) if fam.name == "fwcluster_build_info"
               for s in fam.samples]
    assert sorted(s.labels["daemon"] for s in samples) == ["carpd", "syncd"]
    for s in samples:
        assert s.value == 1 and s.labels["version"] == version.current()
        assert s.labels["sync_protocol"] == versions.protocols()["sync"]
        assert s.labels["config_protocol"] == versions.protocols()["config"]
    old = sync_metrics.families({})[-1]  # a status without release (an older daemon)
    assert old.samples[0].labels["version"] == "unknown"


def test_every_family_name_is_unique():
    """A registry that describes its collectors refuses duplicate names."""
    from prometheus_client import CollectorRegistry
    for fams in (carp_metrics.families({"vips": [], "buckets": {"count": 1}}),
                 sync_metrics.families({"config": {}})):
        reg = CollectorRegistry(auto_describe=True)
        reg.register(metrics.Families(lambda fams=fams: fams))  # raises on a duplicate


def test_textfile_atomic(tmp_path):
    path = metrics.write_textfile(str(tmp_path / "new"), "carpd", metrics.render(_families()))
    assert path.endswith("carpd.prom")
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["carpd.prom"]
    assert oct(Path(path).stat().st_mode & 0o777) == oct(0o644)
    assert samples(Path(path).read_text())[key("fwcluster_carp_state", vhid="1",
                                               state="MASTER")] == 1


def test_textfile_failure_leaves_no_temporary(tmp_path):
    with pytest.raises(TypeError):  # the write fails after the temporary exists
        metrics.write_textfile(str(tmp_path), "carpd", object())
    assert list(tmp_path.iterdir()) == []


def test_syncd_listens_on_the_next_port():
    assert metrics.listen_for("127.0.0.1:9780", "carpd") == "127.0.0.1:9780"
    assert metrics.listen_for("127.0.0.1:9780", "syncd") == "127.0.0.1:9781"
    assert metrics.listen_for("[::1]:9780", "syncd") == "[::1]:9781"
    with pytest.raises(ValueError, match="out of range"):
        metrics.listen_for("127.0.0.1:65535", "syncd")


@pytest.mark.parametrize("listen, reason", [
    ("localhost:9780", "not an IP address"),
    ("fw1.example:9780", "not an IP address"),
    ("::1:9780", "in brackets"),
    ("[127.0.0.1]:9780", "in brackets"),
    ("[::1:9780", "not an IP address"),
    ("127.0.0.1", "not host:port"),
    ("127.0.0.1:http", "not host:port"),
    ("127.0.0.1:70000", "not host:port"),
    (":9780", "not an IP address"),
])
def test_a_listen_that_does_not_parse_is_refused(listen, reason):
    """One clear error, caught both as a config error (ValueError: syncd's
    listen_for) and as a bind failure (OSError: carpd's serve)."""
    with pytest.raises(ValueError, match=reason):
        metrics.listen_for(listen, "syncd")
    with pytest.raises(OSError, match=reason):
        asyncio.run(metrics.serve(listen, lambda: ""))


def test_textfile_dir_takes_the_node_name():
    assert metrics.textfile_dir("/run/prom/{node}", "fw2") == "/run/prom/fw2"
    assert metrics.textfile_dir("/var/lib/node-exporter", "fw2") == "/var/lib/node-exporter"


def test_infinity_and_nan_use_the_exposition_spelling():
    fam = GaugeMetricFamily("x_seconds", "x", labels=("a",))
    for a, v in (("1", float("inf")), ("2", float("-inf")), ("3", float("nan"))):
        fam.add_metric([a], v)
    text = metrics.render([fam])
    assert "+Inf" in text and "-Inf" in text and "NaN" in text
    got = samples(text)
    assert got[key("x_seconds", a="1")] == float("inf")
    assert got[key("x_seconds", a="2")] == float("-inf")
    assert got[key("x_seconds", a="3")] != got[key("x_seconds", a="3")]  # NaN


# --- the HTTP endpoint ---------------------------------------------------------------

def _text() -> str:
    return metrics.render(_families())


async def _exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send data, read until the server closes; b"" if it reset the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.0 ") else 0


async def _scrape(port: int) -> dict:
    """A normal scrape: its samples (the endpoint still serves)."""
    response = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(response) == 200, response[:200]
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    return samples(body.decode())


def _run(test, **bounds):
    """Run test(server, port) against an endpoint on 127.0.0.1."""
    async def main():
        server = await metrics.serve("127.0.0.1:0", _text, **bounds)
        try:
            return await test(server, server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()
    return asyncio.run(asyncio.wait_for(main(), 30))


def test_http_endpoint_on_localhost():
    """A real HTTP client; any other path is 404, another method 405."""
    async def test(server, port):
        loop = asyncio.get_running_loop()

        def get(path, method="GET"):
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, ""
        return [await loop.run_in_executor(None, get, *a)
                for a in (("/metrics",), ("/",), ("/metrics", "POST"), ("/metrics?x=1",))]
    (status, body), (status404, _), (status405, _), (status_q, _) = _run(test)
    assert (status, status404, status405, status_q) == (200, 404, 405, 200)
    got = samples(body)
    assert got[key("fwcluster_carp_state", vhid="1", state="MASTER")] == 1
    assert got[key("fwcluster_metrics_http_requests_total", result="ok")] == 0  # before this one


def test_oversize_request_line_is_refused_and_counted():
    """A 70 KiB request line (the old server's traceback) gets 431, is
    counted, and the next scrape is served."""
    async def test(server, port):
        big = await _exchange(port, b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n")
        many = await _exchange(port, b"GET /metrics HTTP/1.0\r\n" +
                               b"X-Pad: 0123456789abcdef\r\n" * 400 + b"\r\n")
        junk = await _exchange(port, b"\x16\x03\x01\x02\x00 not http\r\n\r\n")
        got = await _scrape(port)
        return big, many, junk, got
    big, many, junk, got = _run(test)
    assert _status(big) == 431 and _status(many) == 431 and _status(junk) == 400
    assert got[key("fwcluster_metrics_http_requests_total", result="too_large")] == 2
    assert got[key("fwcluster_metrics_http_requests_total", result="bad_request")] == 1


def test_connections_beyond_the_cap_get_503():
    """16 idle connections hold every slot: the 17th is answered 503 and
    closed; once they go, a scrape is served."""
    async def test(server, port):
        idle = [await asyncio.open_connection("127.0.0.1", port)
                for _ in range(metrics.MAX_CONNECTIONS)]
        for _ in range(100):  # the server has accepted them all (bounded wait)
            if len(server._active) == metrics.MAX_CONNECTIONS:
                break
            await asyncio.sleep(0.02)
        refused = await _exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")
        for _, w in idle:
            w.close()
        for _ in range(100):
            if not server._active:
                break
            await asyncio.sleep(0.02)
        return len(idle), refused, await _scrape(port)
    n, refused, got = _run(test)
    assert n == 16
    assert _status(refused) == 503
    assert got[key("fwcluster_metrics_http_requests_total", result="busy")] == 1


def test_a_slow_client_is_cut_off_and_others_are_served_meanwhile():
    """A client that sends half a request and stalls is aborted after the
    time limit; a scrape during the stall is served at once."""
    async def test(server, port):
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metr")
        start = loop.time()
        during = await _scrape(port)
        served_in = loop.time() - start
        try:
            cut = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            cut = b""
        cut_after = loop.time() - start
        writer.close()
        return during, served_in, cut, cut_after, await _scrape(port)
    during, served_in, cut, cut_after, after = _run(test, timeout=0.5)
    assert served_in < 0.5 and during
    assert cut == b"" and 0.4 < cut_after < 2
    assert after[key("fwcluster_metrics_http_requests_total", result="timeout")] == 1
    assert after[key("fwcluster_metrics_http_requests_total", result="ok")] == 1


def test_a_reader_that_never_reads_is_cut_off():
    """A client that sends a request and never reads a large answer does not
    hold its slot past the time limit (the answer is aborted, not flushed)."""
    text = "#" * (16 << 20)  # more than the socket buffers hold

    async def main():
        server = await metrics.serve("127.0.0.1:0", lambda: text, timeout=0.5)
        port = server.sockets[0].getsockname()[1]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        sock.send(b"GET /metrics HTTP/1.0\r\n\r\n")  # and never read
        for _ in range(150):  # bounded: 3 s
            if server.counts["timeout"]:
                break
            await asyncio.sleep(0.02)
        held = len(server._active)
        sock.close()
        server.close()
        return server.counts["timeout"], held
    assert asyncio.run(asyncio.wait_for(main(), 30)) == (1, 0)


def test_refusals_are_logged_once_per_period(caplog):
    async def test(server, port):
        for _ in range(5):
            await _exchange(port, b"GET /nothing HTTP/1.0\r\n\r\n")
        return server.counts["not_found"]
    with caplog.at_level(logging.WARNING, logger="fwcluster.metrics"):
        assert _run(test) == 5
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "not_found" in lines[0]


def test_all_interfaces_is_said_in_the_log():
    """Inside a network namespace of its own (unshare), so nothing outside
    this test ever sees the wildcard listener."""
    code = ("import asyncio, logging; from fwcluster import metrics\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "async def main():\n"
            "    for listen in ('0.0.0.0:0', '[::]:0', '127.0.0.1:0'):\n"
            "        s = await metrics.serve(listen, lambda: '')\n"
            "        s.close()\n"
            "asyncio.run(main())\n")
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", code], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "ALL INTERFACES" in line]
    assert len(lines) == 2
    assert "0.0.0.0:0" in lines[0] and "[::]:0" in lines[1]
