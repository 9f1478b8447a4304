"""Issue 18: the screen during the first minute of a real attack, as a newcomer sees it.

The real TUI (``popwatch --backend nft`` in tmux at 100x30, in the server's namespace, on the
lab's syslog files), the real daemons, a POP3 dictionary attacker that shows up first, then THC
hydra on ssh (connections kept open) and on IMAP. Asserted on the screen text (``capture-pane``):

1. the cursor stays on the top row until the user moves it (``b`` offers the loudest attacker,
   not the first one that appeared); a moved cursor follows its address and the title says so;
   ``g``/Home go back to the top row;
2. mail logins never show the service ``other``: the SERVICES column reads pop3 / imap for the
   mail attackers, their live-log lines pop3/imap (or ``mail`` until dovecot names it);
3. the ports panel shows the established connections per port and the top source's share, and
   says when the guesses arrive over few long-lived connections;
4. after ``b``/``y`` on hydra's ssh address: port 22 shows no open connection, the detail view
   says the ban closed its connections (at least one when some were open), and no line from it
   arrives after the ban unless marked ``after ban`` (checked once the logs were read past the
   ban: positive markers in both files).

``PWE2E_DUMP=file`` appends the screens the checks looked at, for a look at what they saw.

``POPWATCH_SCREENSHOT=path.svg`` also saves the screen (with its colours) as an SVG when the
long-lived line for port 143 shows (before the ban): ``screenshots/real.py`` uses it for the README."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from .mailab import HOSTS, USERS, MailLab
from .tui import Tui, ansi_to_svg, attackers_title, live_log, port_row, services, table_rows, top_ip

pytestmark = [pytest.mark.daemons, pytest.mark.netns]

POP3_FIRST = HOSTS["a2"][0]   # poplib, one guess per connection: the first row to appear
HYDRA_SSH = HOSTS["a3"][0]    # hydra ssh, 4 tasks: loud, sorts to the top, keeps connections open
HYDRA_IMAP = HOSTS["a1"][0]   # hydra imap, 2 tasks


MAIL_ATTACKERS = {POP3_FIRST: "pop3", HYDRA_IMAP: "imap"}
#: what a mail login's live-log line may read: its protocol, or ``mail`` while dovecot has not
#: named it yet (the per-attempt auth lines come before the login process's summary)
MAIL_LIVE = {"pop3", "imap", "mail"}


def no_other(screen: str) -> str:
    """Point 2 on one screen: no ``other`` in the SERVICES column, and no mail attacker's
    live-log line reading anything but pop3/imap/mail. Returns the screen."""
    svcs = services(screen)
    assert not any("other" in v.split(",") for v in svcs.values()), svcs
    for hms, svc, addr, _after in live_log(screen):
        if addr in MAIL_ATTACKERS:
            assert svc in MAIL_LIVE, (hms, svc, addr, screen)
    return screen


def check_services_resolved(tui: Tui) -> None:
    """Issue 18 point 2: mail logins never show the service ``other``. The POP3 and IMAP
    attackers' SERVICES read pop3 / imap once dovecot has named the protocol (bounded wait),
    and no screen polled on the way shows ``other`` for them."""
    no_other(tui.screen())
    s = tui.wait(lambda s: all(services(no_other(s)).get(ip) == svc for ip, svc in MAIL_ATTACKERS.items()), 45,
                 "pop3 and imap in the SERVICES column of the mail attackers")
    assert services(s)[HYDRA_SSH] == "ssh", services(s)


def fails_of(screen: str, ip: str) -> int:
    return {r[1]: r[2] for r in table_rows(screen)}.get(ip, -1)


def open_on(screen: str, port: int) -> int | None:
    m = re.search(r"open\s+(\d+)", port_row(screen, port))
    return int(m.group(1)) if m else None


def check_after_ban(lab: MailLab, tui: Tui, ip: str, screen: str, open_before: int) -> None:
    """Issue 18 point 4: the ban (``b``, ``y``) closed ``ip``'s open connections (the detail view
    says how many: at least one when the ports panel showed hydra's connections open before),
    and no guess line from ``ip`` arrives after the ban unless marked ``after ban``.

    Positive progress markers, so "nothing more from ip" means something: the mail attackers'
    FAILS grow after the ban (mail.log read past it), and a bare TCP connect from a4 to port 22,
    made after the ban, shows up as a probe row (auth.log, the file hydra's ssh lines are in,
    read past it)."""
    mail_fails = {a: fails_of(screen, a) for a in MAIL_ATTACKERS}
    # hydra's connections: closed by the ban, and new ones dropped -> nothing open on port 22
    tui.wait(lambda s: open_on(no_other(s), 22) == 0, 20, "port 22 to show no open connection after the ban")
    probe_ip = HOSTS["a4"][0]
    assert lab.connect_ok("a4", 22), "a4 could not connect to port 22"
    seen: list[tuple[str, str, str, bool]] = []

    def progressed(s: str) -> bool:
        no_other(s)
        seen.extend(live_log(s))
        return (any(r[1] == probe_ip for r in table_rows(s))
                and any(fails_of(s, a) > n for a, n in mail_fails.items()))

    s = tui.wait(progressed, 60, "a4's probe row and more mail guesses after the ban")
    assert any(addr in MAIL_ATTACKERS for _h, _s, addr, _a in seen), "no mail attacker line in the live log"
    # the detail view of the banned address
    tui.keys("g")
    s = tui.wait(lambda s: "following" not in attackers_title(s), 10, "top-row mode")
    for _ in range(len(table_rows(s))):
        if top_ip(s) == ip or f"following {ip}" in attackers_title(s):
            break
        tui.keys("Down")
        s = tui.screen()
    tui.keys("Enter")
    d = tui.wait(lambda s: re.search(rf"^│ {re.escape(ip)}\s", s, re.M), 10, f"the detail view of {ip}")
    flat = " ".join(line.strip("│ ") for line in d.splitlines())
    closed = re.search(r"the ban closed (\d+) open connections? of this address at (\d\d:\d\d:\d\d)", flat)
    if open_before:
        assert closed and int(closed.group(1)) >= 1, (open_before, d)
    after = re.search(r"(\d+) lines? arrived after the ban \((\d\d:\d\d:\d\d)\), marked 'after ban': "
                      r"connections opened before a ban stay open", flat)
    ban_hms = (closed or after).group(2) if (closed or after) else None
    assert ban_hms is not None, d
    # every line of ip's in the live log stamped after the ban's second is marked, and no line
    # stamped before it is
    for hms, _svc, addr, marked in seen:
        if addr == ip:
            assert marked or hms <= ban_hms, (hms, ban_hms, "a guess after the ban, not marked")
            assert not marked or hms >= ban_hms, (hms, ban_hms, "marked but before the ban")
    if after:  # the newest events at the end of the detail view carry the marker
        tui.keys("End")
        e = tui.wait(lambda s: "after ban" in s.split("events from this address")[-1], 10,
                     "'after ban' on the newest events in the detail view")
        assert re.search(r"\d\d:\d\d:\d\d after ban ssh ", e), e
    tui.keys("Escape")
    tui.wait(lambda s: "attackers:" in s, 10, "the main screen again")
    dump("detail", d)
    dump("live-log lines of the banned address", "\n".join(sorted({" ".join(map(str, x)) for x in seen
                                                                    if x[2] == ip})))


def dump(what: str, screen: str) -> None:
    if os.environ.get("PWE2E_DUMP"):
        with open(os.environ["PWE2E_DUMP"], "a") as f:
            f.write(f"==== {what} {time.strftime('%H:%M:%S')}\n{screen}\n")


def ban_prompt(screen: str) -> str | None:
    m = re.search(r"Ban (\S+)\?", screen)
    return m.group(1) if m else None


def offered_ban(tui: Tui) -> str:
    """Press b, read whom the confirm offers, cancel with n."""
    tui.keys("b")
    s = tui.wait(ban_prompt, 10, "the ban confirm")
    tui.keys("n")
    tui.wait(lambda s: ban_prompt(s) is None, 10, "the confirm to close")
    return ban_prompt(s) or ""


def test_the_first_minute_of_an_attack_on_screen(maillab: MailLab, tmp_path: Path) -> None:
    lab = maillab
    t0 = time.monotonic()
    cfg = lab.write_config("screen.toml")
    argv = ["ip", "netns", "exec", lab.server, sys.executable, "-m", "popwatch", "--backend", "nft",
            "--state-dir", str(lab.tmp / "state-screen"), "--config", str(cfg), "watch",
            "--log", str(lab.mail_log), "--log", str(lab.auth_log)]
    with Tui(lab.work, argv, cols=100, rows=30) as tui:
        tui.wait(lambda s: "attackers:" in s and "ports:" in s, 30, "the main screen")
        # a POP3 attacker arrives first
        pop3 = lab.mailclient("a2", "attack", out=tmp_path / "a2.jsonl", proto="pop3", seconds=100,
                              parallel=1, timeout=25, max_attempts=len(USERS) * 8)
        s = tui.wait(lambda s: top_ip(s) == POP3_FIRST, 40, "the POP3 attacker's row")
        assert "following" not in attackers_title(s)
        # hydra on ssh: loud, sorts above it; the cursor must be on hydra's row now
        hydra = lab.hydra("a3", "ssh", tasks=4, seconds=100)
        s = tui.wait(lambda s: top_ip(s) == HYDRA_SSH, 45, "hydra's ssh address on the top row")
        rows = table_rows(s)
        assert [r[1] for r in rows[:2]] == [HYDRA_SSH, POP3_FIRST], rows
        assert "following" not in attackers_title(s), attackers_title(s)
        assert offered_ban(tui) == HYDRA_SSH, "b must offer the top row, not the first attacker seen"

        # ---- point 3: what is open per port, and the long-lived line. hydra on IMAP sends guess
        # after guess over the connections it keeps open (dovecot allows several logins per
        # connection); hydra on ssh in this lab reconnects about once per guess
        imap = lab.hydra("a1", "imap", tasks=2, seconds=100)
        s = tui.wait(lambda s: re.search(r"open\s+[1-9]\d*\s+\d+%", port_row(s, 22)), 20,
                     "established connections on port 22")
        m = re.search(r"ok\s+[\d.,]+/s .* open\s+(\d+)\s+(\d+)%$", port_row(s, 22).rstrip())
        assert m and int(m.group(1)) >= 1 and int(m.group(2)) >= 50, port_row(s, 22)  # hydra's 4 tasks
        tui.keys("Tab")  # the ports panel; select port 143
        for _ in range(4):
            if re.match(r"^▶\s+143 ", port_row(tui.screen(), 143)):
                break
            tui.keys("Down")
        s = tui.wait(lambda s: re.search(r"143: \d+ guesses/min from \S+ over \d+ open connections?", s), 60,
                     "the long-lived-connections line for port 143")
        line = re.search(r"143: (\d+) guesses/min from (\S+) over (\d+) open connections?: (.*)", s)
        assert line is not None and line.group(2) == HYDRA_IMAP, s
        assert 1 <= int(line.group(3)) <= 2, line.group(0)  # hydra's 2 tasks
        assert line.group(4).startswith("cap connections per source"), line.group(0)
        assert re.search(r"open\s+[1-9]\d*\s+\d+%", port_row(s, 143)), port_row(s, 143)
        if os.environ.get("POPWATCH_SCREENSHOT"):  # the README's picture: cursor on the top row,
            # port 143 selected in the ports panel, its long-lived line on screen (the line comes
            # and goes with hydra's pace on IMAP: taken now, while it shows)
            shot = tui.wait(lambda s: re.search(r"143: \d+ guesses/min from", s), 60, "the 143 line for the picture",
                            ansi=True)
            Path(os.environ["POPWATCH_SCREENSHOT"]).write_text(
                ansi_to_svg(shot, "popwatch during the lab attack", tui.cols))
        tui.keys("Tab")  # back to the attackers (Tab cycles attackers, ports)
        tui.wait(lambda s: not re.match(r"^▶", port_row(s, 143)), 10, "focus back on the attackers")

        # ---- point 1: pick a row -> it follows that address, the title says so
        tui.keys("Down")
        s = tui.wait(lambda s: "following" in attackers_title(s), 10, "the title to say following")
        m = re.search(r"following (\S+)", attackers_title(s))
        assert m is not None
        picked = m.group(1)
        assert picked != HYDRA_SSH and picked in {r[1] for r in table_rows(s)}
        fails = {r[1]: r[2] for r in table_rows(s)}
        # more guesses arrive and the table re-sorts; the cursor stays on the picked address
        s = tui.wait(lambda s: {r[1]: r[2] for r in table_rows(s)}.get(HYDRA_SSH, 0) > fails[HYDRA_SSH] + 20, 60,
                     "more of hydra's guesses")
        assert f"following {picked}" in attackers_title(s)
        assert offered_ban(tui) == picked
        check_services_resolved(tui)
        # ---- g returns to top-row mode: b offers the top row again
        tui.keys("g")
        s = tui.wait(lambda s: "following" not in attackers_title(s), 10, "top-row mode after g")
        assert offered_ban(tui) == top_ip(tui.screen()) == HYDRA_SSH
        tui.keys("Down", "Home")
        tui.wait(lambda s: "following" not in attackers_title(s), 10, "top-row mode after Home")

        # ---- ban the top attacker for real (b, y): its row turns banned
        open_before = open_on(tui.screen(), 22) or 0  # hydra's ssh connections, just before the ban
        tui.keys("b")
        tui.wait(lambda s: ban_prompt(s) == HYDRA_SSH, 10, "the ban confirm")
        tui.keys("y")
        s = tui.wait(lambda s: any(r[1] == HYDRA_SSH and r[0].startswith("B") for r in table_rows(s)), 20,
                     "hydra's row to show the ban")
        dump("banned", s)
        check_after_ban(lab, tui, HYDRA_SSH, s, open_before)
        assert time.monotonic() - t0 < 240
    for pr in (pop3, hydra, imap):
        lab.stop(pr)
