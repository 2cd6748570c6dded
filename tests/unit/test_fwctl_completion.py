"""fwctl completion bash: generated from the parser, so it covers every
subcommand and option; the script is run by a real bash to complete words."""
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fwcluster.fwctl import build_parser, completion

ROOT = Path(__file__).resolve().parents[2]


def script() -> str:
    cp = subprocess.run([sys.executable, "-m", "fwcluster.fwctl", "completion", "bash"],
                        capture_output=True, text=True, cwd=ROOT, check=True)
    return cp.stdout


def subparsers(parser, path=""):
    """(path, parser) of every command and nested subcommand."""
    yield path, parser
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from subparsers(sp, f"{path} {name}".strip())


def test_every_subcommand_and_option_is_in_the_table():
    parser = build_parser()
    rows = completion.table(parser)
    for path, sp in subparsers(parser):
        assert path in rows, path
        for a in sp._actions:
            for opt in a.option_strings:
                assert opt in rows[path]["words"], (path, opt)
            if not a.option_strings and a.choices and not isinstance(a, argparse._SubParsersAction):
                assert {str(c) for c in a.choices} <= set(rows[path]["words"]), path
    top = rows[""]["children"]
    assert {"status", "maintenance", "drill", "completion"} <= set(top)
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(top) == sorted(sub_action.choices)


def test_script_names_every_command():
    text = script()
    for path, _ in subparsers(build_parser()):
        if path:
            parent, _, last = path.rpartition(" ")
            assert f'"{parent}|{last}")' in text, path


bash = shutil.which("bash")


def complete(text: str, *words: str) -> list[str]:
    """COMPREPLY of the generated function for the words typed so far (the
    last one is the word under the cursor)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in ("fwctl", *words))
    prog = f"{text}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words)}; _fwctl; " \
           'printf "%s\\n" "${COMPREPLY[@]}"'
    cp = subprocess.run([bash, "--norc", "--noprofile", "-c", prog], capture_output=True, text=True,
                        check=True)
    return sorted(w for w in cp.stdout.splitlines() if w)


@pytest.mark.skipif(bash is None, reason="needs bash")
def test_bash_completes_commands_options_and_values(tmp_path):
    text = script()
    assert complete(text, "ma") == ["maintenance"]
    assert complete(text, "--config", "/etc/x.toml", "dr") == ["drill"]
    assert complete(text, "maintenance", "") == sorted(["on", "off", "--json", "-h", "--help"])
    assert complete(text, "drill", "--t") == ["--timeout"]
    assert complete(text, "drill", "--timeout", "") == []  # a number: nothing to offer
    assert complete(text, "conntrack", "--family", "") == ["4", "6"]
    assert complete(text, "completion", "") == sorted(["bash", "-h", "--help"])
    assert "--template" in complete(text, "rules", "check", "--")
    (tmp_path / "cluster.toml").write_text("")
    assert complete(text, "--config", str(tmp_path / "clu")) == [str(tmp_path / "cluster.toml")]
    if "upgrade" in completion.table(build_parser()):  # a free positional: file names
        image = tmp_path / "fwcluster-1.0-amd64.img.xz"
        image.write_text("")
        assert complete(text, "upgrade", str(tmp_path / "fwc")) == [str(image)]
    top = complete(text, "")
    assert {"status", "drill", "completion", "--config", "--node"} <= set(top)
