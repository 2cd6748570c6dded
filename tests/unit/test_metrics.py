"""The metrics helpers both daemons share: rendering is valid Prometheus text
(parsed by prometheus_client), the textfile, the endpoint, where each daemon
listens and writes."""
import asyncio
import urllib.request

import pytest

from fwcluster import metrics
from tests.prom_text import key, parser, samples


def _families():
    return [
        metrics.Family("fwcluster_carp_state", "gauge", "1 when the vhid is in this state")
        .add(1, vhid="1", state="MASTER").add(0, vhid="1", state="BACKUP"),
        metrics.Family("fwcluster_carp_drops_total", "counter", "Dropped adverts by reason")
        .add(3, vhid="1", reason='bad"hmac'),
        metrics.Family("fwcluster_sync_lag_seconds", "gauge", "Lag").add(0.0125),
    ]


def test_render_parses():
    text = metrics.render(_families())
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert fams["fwcluster_carp_state"].samples[0].labels == {"vhid": "1", "state": "MASTER"}
    assert fams["fwcluster_carp_drops"].samples[0].value == 3
    assert fams["fwcluster_carp_drops"].samples[0].labels["reason"] == 'bad"hmac'
    assert fams["fwcluster_sync_lag_seconds"].samples[0].value == 0.0125


def test_textfile_atomic(tmp_path):
    path = metrics.write_textfile(str(tmp_path), "carpd", metrics.render(_families()))
    assert path.endswith("carpd.prom")
    assert [p.name for p in tmp_path.iterdir()] == ["carpd.prom"]


def test_http_endpoint_on_localhost():
    async def main():
        server = await metrics.serve("127.0.0.1:0", lambda: metrics.render(_families()))
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        def get(path):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, ""
        ok = await loop.run_in_executor(None, get, "/metrics")
        missing = await loop.run_in_executor(None, get, "/")
        server.close()
        await server.wait_closed()
        return ok, missing
    (status, body), (status404, _) = asyncio.run(main())
    assert status == 200 and status404 == 404
    assert any(f.name == "fwcluster_carp_state" for f in parser.text_string_to_metric_families(body))


def test_syncd_listens_on_the_next_port():
    assert metrics.listen_for("127.0.0.1:9780", "carpd") == "127.0.0.1:9780"
    assert metrics.listen_for("127.0.0.1:9780", "syncd") == "127.0.0.1:9781"
    assert metrics.listen_for("[::1]:9780", "syncd") == "[::1]:9781"
    with pytest.raises(ValueError, match="out of range"):
        metrics.listen_for("127.0.0.1:65535", "syncd")


def test_textfile_dir_takes_the_node_name():
    assert metrics.textfile_dir("/run/prom/{node}", "fw2") == "/run/prom/fw2"
    assert metrics.textfile_dir("/var/lib/node-exporter", "fw2") == "/var/lib/node-exporter"


def test_infinity_and_nan_use_the_exposition_spelling():
    text = metrics.render([metrics.Family("x_seconds", "gauge", "x").add(float("inf"), a="1")
                           .add(float("-inf"), a="2").add(float("nan"), a="3")])
    assert "+Inf" in text and "-Inf" in text and "NaN" in text
    got = samples(text)
    assert got[key("x_seconds", a="1")] == float("inf")
    assert got[key("x_seconds", a="2")] == float("-inf")
    assert got[key("x_seconds", a="3")] != got[key("x_seconds", a="3")]  # NaN
