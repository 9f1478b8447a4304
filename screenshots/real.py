#!/usr/bin/env python3
"""Regenerate screenshots/real-attack.svg: the REAL popwatch TUI during the real-attack lab
(dovecot, OpenSSH, rsyslog, THC hydra), never drawn by hand.

    sudo python3 screenshots/real.py

Needs root and the lab's tools (see tests/e2e/README.md). Runs tests/e2e/test_screen.py with
``POPWATCH_SCREENSHOT`` set: the test captures the tmux pane with its colours (``capture-pane
-e``) at the moment the ports panel says the IMAP guesses arrive over long-lived connections,
and converts it to SVG with rich (tests/e2e/tui.py ``ansi_to_svg``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent
REPO = OUT.parent


def main() -> int:
    target = OUT / "real-attack.svg"
    env = dict(os.environ, POPWATCH_SCREENSHOT=str(target), PYTHONPATH=str(REPO), CI="true")
    cp = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x",
                         "tests/e2e/test_screen.py"], cwd=REPO, env=env, timeout=600, check=False)
    if cp.returncode == 0 and target.exists():
        print(target.name)
    return cp.returncode


if __name__ == "__main__":
    sys.exit(main())
