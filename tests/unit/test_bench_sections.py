"""bench.common.write_section: a benchmark that measures one part of a page
(the failover bench under sync load) rewrites its section and nothing else,
and the full page's rewrite keeps the section (bench.failover.write_doc)."""
from __future__ import annotations

from bench.common import section, summary, write_section


def test_a_section_is_appended_then_replaced_in_place(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("# Page\n\nhand-written\n")
    write_section(doc, "load", "first\n")
    assert doc.read_text() == ("# Page\n\nhand-written\n\n<!-- load: begin -->\nfirst\n"
                               "<!-- load: end -->\n")
    doc.write_text(doc.read_text() + "\ntail\n")
    write_section(doc, "load", "second")
    text = doc.read_text()
    assert "first" not in text and "<!-- load: begin -->\nsecond\n<!-- load: end -->\n" in text
    assert text.startswith("# Page\n\nhand-written\n") and text.endswith("\ntail\n")
    assert section(text, "load") == "<!-- load: begin -->\nsecond\n<!-- load: end -->\n"
    assert section(text, "other") == ""


def test_the_full_failover_page_keeps_the_section_under_load(tmp_path):
    from bench import failover
    doc = tmp_path / "failover.md"
    write_section(doc, failover.LOAD_SECTION, "figures under load")
    env = {"date": "d", "kernel": "k", "cpus": 2, "loadavg_start": "0", "loadavg_end": "0",
           "python": "3", "keepalived": None, "ucarp": None}
    row = {"key": "fast", "label": "carpd", "timing": "t", "advert_interval_s": 0.04,
           "master_down_s": 0.08, "failures": [], **summary([0.07])}
    failover.write_doc(doc, [row], {}, env, 1)
    text = doc.read_text()
    assert text.startswith("# Failover: takeover gap")
    assert section(text, failover.LOAD_SECTION).count("figures under load") == 1
