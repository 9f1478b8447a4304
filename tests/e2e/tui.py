"""The real popwatch TUI in tmux, for the e2e tests: started in the lab's server namespace on a
private tmux socket, read with ``capture-pane``, driven with ``send-keys``, stopped by PID.

:func:`ansi_to_svg` turns a ``capture-pane -e`` capture (the screen as the terminal shows it,
with its colours) into an SVG with rich, so a README screenshot can be taken from the real
program during a real attack (``screenshots/real.py``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.netns.nslab import REPO


class Tui:
    """``popwatch`` (TUI) under tmux at ``cols`` x ``rows``; a context manager."""

    def __init__(self, workdir: Path, argv: Sequence[str], *, cols: int = 100, rows: int = 30) -> None:
        self.sock = str(workdir / "tmux.sock")
        self.argv = list(argv)
        self.cols, self.rows = cols, rows
        self.server_pid: int | None = None

    def tmux(self, *args: str, check: bool = True, timeout: float = 10) -> str:
        cp = subprocess.run(["tmux", "-S", self.sock, *args], capture_output=True, text=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {cp.stderr.strip()}")
        return cp.stdout

    def __enter__(self) -> Tui:
        # COLUMNS/LINES from the caller's environment would override the pane's size in Textual
        env = f"env -u COLUMNS -u LINES PYTHONPATH={REPO} TERM=xterm-256color COLORTERM=truecolor"
        # Textual draws on stderr: nothing is redirected; the pane stays after an exit
        # (remain-on-exit), so a traceback is on the screen
        cmd = f"{env} {' '.join(map(_q, self.argv))}"
        conf = Path(self.sock).with_name("tmux.conf")
        conf.write_text("set -g remain-on-exit on\nset -g escape-time 0\nset -g status off\n")
        self.tmux("-f", str(conf), "new-session", "-d", "-s", "pw", "-x", str(self.cols), "-y", str(self.rows),
                  cmd)
        self.server_pid = int(self.tmux("display-message", "-p", "#{pid}").strip())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Quit popwatch (q), then stop the tmux server by its PID (SIGTERM, SIGKILL)."""
        if self.server_pid is None:
            return
        try:
            if self.alive():
                self.keys("q")
                self.wait(lambda s: not self.alive(), 10, "popwatch to quit", check_alive=False)
        except Exception:  # noqa: BLE001 - the server goes below in any case
            pass
        pid, self.server_pid = self.server_pid, None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)

    def alive(self) -> bool:
        out = self.tmux("list-panes", "-F", "#{pane_dead}", check=False)
        return out.strip() == "0"

    def screen(self, ansi: bool = False) -> str:
        return self.tmux("capture-pane", "-p", *(["-e"] if ansi else []), "-t", "pw")

    def keys(self, *keys: str) -> None:
        for k in keys:
            self.tmux("send-keys", "-t", "pw", k)
            time.sleep(0.15)

    def wait(self, cond: Callable[[str], object], secs: float, what: str, *, check_alive: bool = True,
             ansi: bool = False) -> str:
        """Poll the screen every 0.25 s until ``cond(screen)`` is truthy (at most ``secs``).
        ``ansi``: capture with the colours and return that capture (``cond`` sees the text)."""
        deadline = time.monotonic() + secs
        s = ""
        while time.monotonic() < deadline:
            raw = self.screen(ansi=ansi)
            s = _ANSI.sub("", raw) if ansi else raw
            if cond(s):
                return raw
            if check_alive and not self.alive():
                raise RuntimeError(f"popwatch exited while waiting for {what}:\n{s}")
            time.sleep(0.25)
        raise TimeoutError(f"timed out after {secs} s waiting for {what}; screen:\n{s}")


_ANSI = re.compile(r"\x1b\[[0-9;:?]*[ -/]*[@-~]")


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'" if re.search(r"[^\w@%+=:,./-]", s) else s


# ---------------------------------------------------------------- reading the screen
def attackers_title(screen: str) -> str:
    return next((line for line in screen.splitlines() if "attackers:" in line), "")


def table_rows(screen: str) -> list[tuple[str, str, int]]:
    """The attacker rows shown: (state label, ip, failures)."""
    lines = screen.splitlines()
    head = next((i for i, line in enumerate(lines) if re.match(r"\s*STATE\s+IP\s+FAILS", line)), None)
    if head is None:
        return []
    rows = []
    for line in lines[head + 1:]:
        parts = line[6:].split()
        if len(parts) < 2 or not re.match(r"^[0-9a-f]*[.:][0-9a-f.:…]*$", parts[0]) or \
                not parts[1].replace(",", "").isdigit():
            break
        rows.append((line[:5].strip(), parts[0], int(parts[1].replace(",", ""))))
    return rows


def services(screen: str) -> dict[str, str]:
    """{ip: SERVICES column text} of the attacker rows shown (the column found by its header)."""
    lines = screen.splitlines()
    head = next((line for line in lines if re.match(r"\s*STATE\s+IP\s+FAILS", line)), None)
    if head is None or "SERVICES" not in head:
        return {}
    a = head.index("SERVICES")
    nxt = re.search(r"\S", head[a + len("SERVICES"):])
    b = a + len("SERVICES") + nxt.start() if nxt else len(head)
    out = {}
    for _state, ip, _fails in table_rows(screen):
        line = next(line for line in lines if line[6:].split()[:1] == [ip])
        out[ip] = line[a:b].strip()
    return out


LIVE_LINE = re.compile(r"^(\d\d:\d\d:\d\d) (\S+)\s+(\S+)\s+(after ban )?")


def live_log(screen: str) -> list[tuple[str, str, str, bool]]:
    """The live-log lines shown: (HH:MM:SS, service, address, marked ``after ban``)."""
    lines = screen.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("─live log")), None)
    if start is None:
        return []
    out = []
    for line in lines[start + 1:]:
        m = LIVE_LINE.match(line)
        if m:
            out.append((m.group(1), m.group(2), m.group(3), bool(m.group(4))))
    return out


def top_ip(screen: str) -> str | None:
    rows = table_rows(screen)
    return rows[0][1] if rows else None


def port_row(screen: str, port: int) -> str:
    return next((line for line in screen.splitlines() if re.match(rf"^[▶ ]*{port} ", line)), "")


def ansi_to_svg(ansi: str, title: str, cols: int) -> str:
    """An SVG of a terminal capture (``capture-pane -e``), via rich."""
    from rich.console import Console
    from rich.text import Text

    console = Console(record=True, width=cols, file=open(os.devnull, "w"), force_terminal=True,  # noqa: SIM115
                      color_system="truecolor", legacy_windows=False)
    lines = ansi.rstrip("\n").split("\n")
    for line in lines:
        console.print(Text.from_ansi(line, no_wrap=True, overflow="crop", end=""), crop=True, soft_wrap=False)
    return console.export_svg(title=title)


if __name__ == "__main__":  # pragma: no cover - manual: convert a saved capture
    src, dst = sys.argv[1], sys.argv[2]
    Path(dst).write_text(ansi_to_svg(Path(src).read_text(), "popwatch", 100))
