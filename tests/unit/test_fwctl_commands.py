"""fwctl's subcommands are all there: a module that fails to import is an
error, never a silently missing command."""
from __future__ import annotations

import importlib
import sys

import pytest

from fwcluster import fwctl


def test_every_listed_command_is_registered():
    parser = fwctl.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(fwctl.COMMANDS) <= set(sub.choices)


def test_a_broken_command_module_is_an_error(monkeypatch):
    real = importlib.import_module

    def broken(name, *a, **kw):
        if name == "fwcluster.fwctl.drill":
            raise ModuleNotFoundError("No module named 'fwcluster.fwctl.drill'", name=name)
        return real(name, *a, **kw)

    monkeypatch.setattr(importlib, "import_module", broken)
    monkeypatch.delitem(sys.modules, "fwcluster.fwctl.drill", raising=False)
    with pytest.raises(ModuleNotFoundError):
        fwctl.build_parser()
