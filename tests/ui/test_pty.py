"""Hostile log lines through the running app in a real pseudo-terminal.

The app runs with Textual's real terminal driver (not headless) on a pty for a few seconds,
while attacker-controlled lines arrive: Rich/Textual markup (``[/x]``, ``[@click=app.quit]``),
escape sequences that would set the terminal title, clear the screen, move the cursor or write
the clipboard, and a very long username. The IP detail screen of the attacker is opened too.
Asserted on the bytes the terminal received: the app kept running and exited normally, the
attacker's text was drawn, and none of its escape sequences reached the terminal (Textual's own
sequences are expected, so the check is for the attacker's exact ones).
"""

from __future__ import annotations

import os
import pty
import select
import struct
import subprocess
import sys
import termios
import fcntl
import time
from pathlib import Path

import pytest

CHILD = r'''
import sys, time
from popwatch.demo import FrozenDemo
from popwatch.model import AuthEvent
from popwatch.ui.app import PopwatchApp
from popwatch.ui.widgets import AttackerTable

EVIL_USERS = ["[/x]", "[@click=app.quit]q", "\x1b]0;PWNED-TITLE\x07", "\x1b[2JPWNED-CLEAR",
              "\x1b[12;34HPWNED-MOVE", "\x1b]52;c;UFdORUQ=\x07PWNED-CLIP", "[bold red]PWNED-MARKUP",
              "L" * 5000]

def lines(n):
    out = []
    for i, u in enumerate(EVIL_USERS):
        out.append(f"2026-11-18T06:00:{(n + i) % 60:02d}.000000+00:00 mail1 sshd[{900 + n + i}]: "
                   f"Invalid user {u} from 203.0.113.250 port {40000 + n + i}")
        out.append(f"2026-11-18T06:00:{(n + i) % 60:02d}.000000+00:00 mail1 dovecot: pop3-login: Aborted "
                   f"login: user=<{u}>, method=PLAIN, rip=203.0.113.250, lip=192.0.2.1")
    return out

demo = FrozenDemo()
demo.advance(60)
demo.feed(lines(0))
# the UI's own gate: an event that skipped the parser's sanitising
demo.monitor.store.add_events([AuthEvent(ts=demo.clock(), service="ssh", kind="invalid_user",
                                         ip="203.0.113.250", user="\x1b]0;PWNED-RAW\x07\x1b[2J",
                                         line="raw \x1b]0;PWNED-RAW\x07 line")])

class HostileApp(PopwatchApp):
    def on_mount(self):
        super().on_mount()
        self.n = 0
        self.set_interval(0.2, self.more)
        self.set_timer(1.5, self.open_detail)

    def more(self):
        self.n += 1
        demo.advance(1)
        demo.feed(lines(self.n * 10))

    def open_detail(self):
        t = self.query_one(AttackerTable)
        t.cursor_ip, t.follow = "203.0.113.250", True
        self.refresh_view(force=True)
        self.main.action_detail()

app = HostileApp(demo.monitor, mode="demo", host="mail1", run_monitor=False, tick=0.25, exit_after=3.5)
t0 = time.monotonic()
app.run()
print(f"\r\nCHILD-DONE rc={app.return_code} ran={time.monotonic() - t0:.1f}", flush=True)
'''

ATTACKER_SEQUENCES = [b"\x1b]0;PWNED", b"\x1b[2JPWNED", b"\x1b[12;34HPWNED", b"\x1b]52;c;UFdORUQ",
                      b"\x1b]0;PWNED-RAW"]


def run_in_pty(code: str, cols: int = 100, rows: int = 30, timeout: float = 40.0) -> bytes:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows),
           "TEXTUAL_ANIMATIONS": "none"}
    env.pop("TEXTUAL", None)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=Path(__file__).resolve().parents[2], start_new_session=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the pty
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        os.close(master)
    return bytes(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs a Linux pty")
def test_hostile_lines_never_reach_the_terminal_as_escape_sequences():
    out = run_in_pty(CHILD)
    tail = out[-400:].decode("utf-8", "replace")
    assert b"CHILD-DONE rc=0" in out or b"CHILD-DONE rc=None" in out, tail
    ran = float(out.split(b"ran=")[1].split()[0])
    assert ran >= 3.0, "the app stopped early (did a hostile line quit it?)"
    assert b"\x1b[?1049h" in out  # Textual really drove the terminal (alternate screen)
    assert b"PWNED" in out  # the attacker's text was drawn, as text
    for seq in ATTACKER_SEQUENCES:
        assert seq not in out, seq
    # the escaped, visible form of the ESC is what the admin sees
    assert b"\\x1b]0;PWNED" in out or b"\\x1b" in out
    assert b"Traceback" not in out, tail
