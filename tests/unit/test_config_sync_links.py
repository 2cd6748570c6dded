"""[sync] interfaces and members' sync_addresses: redundant sync links."""
import tomllib

import pytest

from fwcluster import configfile
from fwcluster.core import config
from tests.unit.test_config import EXAMPLE, SHARED_EXAMPLE

TWO_LINKS = (
    ('interface = "sync0"', 'interfaces = ["sync0", "sync1"]'),
    ('sync_address = "203.0.113.1"',
     'sync_address = "203.0.113.1"\nsync_addresses = ["203.0.113.1", "198.51.100.201"]'),
    ('sync_address = "203.0.113.2"', 'sync_addresses = ["203.0.113.2", "198.51.100.202"]'),
)


def _load(tmp_path, edits, example=EXAMPLE):
    text = example.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    p = tmp_path / "cluster.toml"
    p.write_text(text)
    return config.parse(tomllib.loads(text), str(p))


def test_contract_example_is_one_link():
    for example in (EXAMPLE, SHARED_EXAMPLE):
        if not example.exists():
            continue
        cfg = configfile.load(example, node="fw1")
        assert cfg.sync.interfaces == ("sync0",) and cfg.sync.interface == "sync0"
        assert cfg.member("fw2").link_addresses == (cfg.member("fw2").sync_address,)


def test_two_links_in_order(tmp_path):
    cfg = _load(tmp_path, TWO_LINKS)
    assert cfg.sync.interfaces == ("sync0", "sync1")
    fw2 = cfg.member("fw2")
    assert [str(a) for a in fw2.link_addresses] == ["203.0.113.2", "198.51.100.202"]
    assert str(fw2.sync_address) == "203.0.113.2"     # the first link's, for the config channel


def _error(tmp_path, edits) -> config.ConfigError:
    with pytest.raises(config.ConfigError) as ei:
        _load(tmp_path, edits)
    assert str(tmp_path / "cluster.toml") in str(ei.value)
    return ei.value


def test_both_keys_is_an_error_naming_them(tmp_path):
    e = _error(tmp_path, [('interface = "sync0"', 'interface = "sync0"\ninterfaces = ["sync0", "sync1"]')])
    assert e.key == "sync.interfaces" and "sync.interface" in e.reason and "not both" in e.reason


def test_neither_key_is_an_error(tmp_path):
    e = _error(tmp_path, [('interface = "sync0"', '')])
    assert e.key == "sync.interfaces" and "missing" in e.reason


@pytest.mark.parametrize("edit, key, reason", [
    (('sync_addresses = ["203.0.113.2", "198.51.100.202"]', 'sync_addresses = ["203.0.113.2"]'),
     "member[1].sync_addresses", "1 addresses for 2 sync links"),
    (('sync_addresses = ["203.0.113.2", "198.51.100.202"]', 'sync_address = "203.0.113.2"'),
     "member[1].sync_addresses", "one address per sync link"),
    (('sync_addresses = ["203.0.113.2", "198.51.100.202"]', 'sync_addresses = ["203.0.113.2", "2001:db8::2"]'),
     "member[1].sync_addresses[1]", "family differs"),
    (('sync_addresses = ["203.0.113.2", "198.51.100.202"]', 'sync_addresses = ["203.0.113.2", "198.51.100.201"]'),
     "member[1].sync_addresses[1]", "duplicate address"),
    (('sync_addresses = ["203.0.113.1", "198.51.100.201"]', 'sync_addresses = ["203.0.113.9", "198.51.100.201"]'),
     "member[0].sync_address", "not sync_addresses[0]"),
    (('interfaces = ["sync0", "sync1"]', 'interfaces = ["sync0", "sync0"]'),
     "sync.interfaces[1]", "listed twice"),
])
def test_bad_link_addresses(tmp_path, edit, key, reason):
    e = _error(tmp_path, [*TWO_LINKS, edit])
    assert e.key == key and reason in e.reason, e
