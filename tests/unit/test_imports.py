"""House rule: nothing outside popwatch/ui imports Textual (headless runs, the CLI and tests
must work without loading it)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import popwatch


def test_nothing_outside_ui_imports_textual():
    mods = [m.name for m in pkgutil.walk_packages(popwatch.__path__, "popwatch.")
            if not m.name.startswith("popwatch.ui") and m.name != "popwatch.__main__"]
    assert "popwatch.store" in mods and "popwatch.monitor" in mods
    code = ("import importlib, sys\n"
            f"for m in {mods!r}:\n"
            "    importlib.import_module(m)\n"
            "bad = sorted(k for k in sys.modules if k == 'textual' or k.startswith('textual.'))\n"
            "print(bad[:3])\n"
            "sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
