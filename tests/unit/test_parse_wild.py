"""Detection in the wild: every failure form of tests/data/parse/wild-corpus.tsv (derived from
the daemons' format strings across versions) under every supported line prefix.

Each message is put under each prefix the daemon can be logged with (syslog RFC 3339 / BSD /
unpadded day / RFC 5424 / RFC 3164 <PRI> / busybox / illumos ``[ID ...]`` / macOS ASL and
``log show`` / socklog + svlogd / no timestamp / no pid / ``[tag]`` / journald fields; dovecot log_path, TAI64N and bare forms;
``sshd -E`` and multilog for sshd). Per daemon, precision and recall must be 1.0, and every
field (address, user, kind, attempts, service) must be the expected one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from popwatch.model import FAILURE_KINDS, RawLine
from popwatch.parse import Parser
from popwatch.parse.prefix import TS_NONE, split

CORPUS = Path(__file__).resolve().parents[1] / "data" / "parse" / "wild-corpus.tsv"
NOW = 1795900000.0
FAILS = {k.value for k in FAILURE_KINDS}
DOVECOT_PROCS = ("auth", "pop3-login", "imap-login", "submission-login", "managesieve-login")


def rows() -> list[dict[str, str]]:
    lines = [ln.rstrip("\n") for ln in CORPUS.open(encoding="utf-8") if not ln.startswith("#")]
    head = lines[0].split("\t")
    return [dict(zip(head, ln.split("\t"), strict=True)) for ln in lines[1:] if ln]


def pid_prefixes(tag: str, pid: int) -> dict[str, str]:
    return {
        "rfc3339": f"2026-11-28T05:00:21.664766+00:00 mx {tag}[{pid}]: ",
        "bsd": f"Nov 28 05:00:21 mx {tag}[{pid}]: ",
        "bsd-padded-day": f"Nov  8 05:00:21 mx {tag}[{pid}]: ",
        "bsd-unpadded-day": f"Nov 8 05:00:21 mx {tag}[{pid}]: ",
        "rfc5424": f"<38>1 2026-11-28T05:00:21.664766Z mx {tag} {pid} - - ",
        "rfc3164-pri": f"<38>Nov 28 05:00:21 mx {tag}[{pid}]: ",
        "busybox": f"Nov 28 05:00:21 mx auth.info {tag}[{pid}]: ",
        "illumos": f"Nov 28 05:00:21 mx {tag}[{pid}]: [ID 800047 auth.info] ",
        "macos-asl": f"Nov 28 05:00:21 mx {tag}[{pid}] <Notice>: ",
        "no-timestamp": f"mx {tag}[{pid}]: ",
        "no-timestamp-no-host": f"{tag}[{pid}]: ",
        "macos-log-show": f"2026-11-28 05:00:21.664766+0000  mx {tag}[{pid}]: ",
        "local-date-template": f"2026-11-28 05:00:21 mx {tag}[{pid}]: ",
        "rsyslog8-forwarded-5424": f"2026-11-28T05:00:21.664766+00:00 mx {tag}[{pid}] ",
        "freebsd-syslogd-v": f"Nov 28 05:00:21 <4.6> mx {tag}[{pid}]: ",
        "busybox-S-no-host": f"Nov 8 05:00:21 {tag}[{pid}]: ",
        "socklog-svlogd-tt": f"2026-11-28T05:00:21.66476 auth.info: Nov 28 05:00:21 {tag}[{pid}]: ",
        "socklog-musl": f"2026-11-28T05:00:21.66476 auth.info: {tag}[{pid}]:  ",
    }


def nopid_prefixes(row: dict[str, str], tag: str) -> dict[str, str]:
    out = {"no-pid": f"Nov 28 05:00:21 mx {tag}: ", "bracket-tag": f"Nov 28 05:00:21 mx [{tag}]: "}
    msg = row["message"]
    if row["daemon"] == "sshd" and tag == "sshd":
        out["sshd -E"] = ""
        out["multilog"] = "@4000000069291a1f0d2ac4fc "
        out["tai64nlocal"] = "2026-11-28 05:00:21.664766500 "
    if row["daemon"] == "dovecot" and tag == "dovecot" and msg.startswith(DOVECOT_PROCS):
        out["log_path-bsd"] = "Nov 28 05:18:22 "
        out["log_path-iso"] = "2026-11-28 05:19:09 "
        out["multilog"] = "@4000000069291a1f0d2ac4fc "
        out["tai64nlocal"] = "2026-11-28 05:00:21.664766500 "
        out["stderr"] = ""
    return out


def cases() -> Iterator[tuple[dict[str, str], str, str, list[RawLine]]]:
    """(row, prefix name, line, raw lines to parse in order: context first)."""
    for i, row in enumerate(rows()):
        pid = 1000 + i
        for tag in row["tags"].split(","):
            variants: list[tuple[str, bool, object]] = []
            for name, pre in pid_prefixes(tag, pid).items():
                variants.append((name, True, pre))
            variants.append(("journal", True, {"SYSLOG_IDENTIFIER": tag, "_PID": str(pid),
                                               "__REALTIME_TIMESTAMP": "1795900000000000"}))
            if row["nopid"] != "x":
                for name, pre in nopid_prefixes(row, tag).items():
                    variants.append((name, False, pre))
            for name, _has_pid, pre in variants:
                msgs = [m for m in (row["context"], row["message"]) if m]
                if isinstance(pre, dict):
                    raws = [RawLine(m, "corpus", n, pre) for n, m in enumerate(msgs, 1)]
                else:
                    raws = [RawLine(pre + m, "corpus", n) for n, m in enumerate(msgs, 1)]
                yield row, f"{tag} {name}", raws[-1].text, raws


def check(row: dict[str, str], prefix: str, raws: list[RawLine]) -> tuple[str, str | None]:
    """(outcome tp/fn/fp/tn, mismatch description or None)."""
    p = Parser(now=lambda: NOW)
    ev = None
    for raw in raws:
        ev = p.parse(raw)
    kind, ip = row["kind"], row["ip"]
    got_fail = ev is not None and ev.kind in FAILS
    if kind == "!":
        ok = ev is None or ev.ip is None or ev.ip == ip[1:]
        return ("tn" if ok else "fp"), (None if ok else f"hostile line reported {ev.ip}")  # type: ignore[union-attr]
    if kind == "none":
        return ("fp" if got_fail else "tn"), (None if ev is None else f"unexpected {ev.kind} event")
    want_ip = None if ip == "-" else ip
    if ev is None:
        return ("fn" if kind in FAILS else "tn"), "no event"
    has_pid = not prefix.endswith(("no-pid", "bracket-tag", "sshd -E", "multilog", "log_path-bsd",
                                   "log_path-iso", "stderr", "tai64nlocal"))
    want = (kind, want_ip, None if row["user"] == "-" else row["user"],
            int(row["attempts"] if has_pid else row["nopid"]), row["service"])
    got = (ev.kind, ev.ip, ev.user, ev.attempts, ev.service)
    if kind in FAILS:
        outcome = "tp" if got_fail and ev.ip == want_ip else ("fp" if got_fail else "fn")
    else:
        outcome = "fp" if got_fail else "tn"
    return outcome, (None if got == want else f"got {got}, want {want}")


def measure() -> tuple[dict[str, Counter], list[str], int]:
    stats: dict[str, Counter] = {}
    bad: list[str] = []
    n = 0
    for row, prefix, line, raws in cases():
        n += 1
        outcome, why = check(row, prefix, raws)
        stats.setdefault(row["daemon"], Counter())[outcome] += 1
        if why is not None and not (row["kind"] in ("none", "!") and why in ("no event",)):
            bad.append(f"[{prefix}] {line!r}: {why}")
    return stats, bad, n


def test_corpus_is_large_and_every_form_is_under_every_prefix() -> None:
    rs = rows()
    assert len(rs) >= 120
    n = sum(1 for _ in cases())
    assert n >= 400 * 4, n  # every message under each of its prefixes
    # the real-format messages cover all three daemons, with negatives for each
    for d in ("sshd", "dovecot", "postfix"):
        assert any(r["daemon"] == d and r["kind"] in FAILS for r in rs)
        assert any(r["daemon"] == d and r["kind"] not in FAILS for r in rs)


def test_precision_and_recall_per_daemon_are_one() -> None:
    stats, bad, n = measure()
    report = []
    for d, c in sorted(stats.items()):
        tp, fp, fn = c["tp"], c["fp"], c["fn"]
        prec = tp / (tp + fp) if tp + fp else 1.0
        rec = tp / (tp + fn) if tp + fn else 1.0
        report.append(f"{d}: {tp + fn} failure lines, {c['tn']} negatives, precision {prec:.3f}, recall {rec:.3f}")
    print(f"\n{n} corpus lines\n" + "\n".join(report))
    assert all(", precision 1.000, recall 1.000" in r for r in report), "\n".join(report + bad[:40])
    assert not bad, f"{len(bad)} mismatches:\n" + "\n".join(bad[:40])


def test_scan_path_agrees_with_the_live_path() -> None:
    """parse_many (scan's inlined hot loop) gives the same events as parse (the monitor's)."""
    n = 0
    for _row, prefix, _line, raws in cases():
        if prefix.endswith("journal"):
            continue
        p1, p2 = Parser(now=lambda: NOW), Parser(now=lambda: NOW)
        one = [p1.parse(r) for r in raws]
        many = list(p2.parse_many([r.text for r in raws], "corpus", 1))
        assert [e for e in one if e is not None] == many, raws[-1].text
        n += 1
    assert n > 2000


def test_prefix_split_keeps_the_message() -> None:
    msg = "Invalid user admin from 203.0.113.14 port 4444"
    for name, pre in pid_prefixes("sshd", 77).items():
        kind, _ts, _host, tag, pid, rest = split(pre + msg)
        assert (tag, pid) == ("sshd", "77"), name
        assert rest.endswith(msg), name
        if name.startswith("no-timestamp"):
            assert kind == TS_NONE


def test_bsd_day_without_padding_gets_its_date() -> None:
    p = Parser(now=lambda: NOW)
    a = p.parse(RawLine("Nov 8 05:00:21 mx sshd[1]: Invalid user a from 203.0.113.1 port 2", "t", 1))
    b = p.parse(RawLine("Nov  8 05:00:21 mx sshd[2]: Invalid user a from 203.0.113.1 port 2", "t", 2))
    assert a is not None and b is not None and a.ts == b.ts


def test_tai64n_label_is_its_time() -> None:
    p = Parser(now=lambda: NOW)
    # 2**62 + 10 + 1795900000 = 0x400000006b0b... ; nanoseconds 0
    label = f"@{2**62 + 10 + 1795900000:016x}00000000"
    ev = p.parse(RawLine(f"{label} auth: passwd-file(bob,203.0.113.9,<s>): unknown user", "t", 1))
    assert ev is not None and ev.ts == 1795900000 and ev.ip == "203.0.113.9"


def test_pid_reused_by_another_address_is_a_new_attempt() -> None:
    p = Parser(now=lambda: NOW)
    got = [p.parse(RawLine(f"Nov 28 05:0{i}:00 mx sshd[4242]: Invalid user ftp from {ip} port 22", "t", i))
           for i, ip in enumerate(["203.0.113.31", "203.0.113.31", "203.0.113.32"])]
    assert [(e.ip, e.attempts) for e in got if e] == [("203.0.113.31", 1), ("203.0.113.31", 0), ("203.0.113.32", 1)]


def test_publickey_is_a_probe_unless_configured() -> None:
    line = "Nov 28 05:00:21 mx sshd[9]: Failed publickey for bob from 203.0.113.9 port 5 ssh2: RSA SHA256:x"
    ev = Parser(now=lambda: NOW).parse(RawLine(line, "t", 1))
    assert ev is not None and (ev.kind, ev.attempts) == ("probe", 0)
    ev = Parser(now=lambda: NOW, count_publickey=True).parse(RawLine(line, "t", 1))
    assert ev is not None and (ev.kind, ev.attempts) == ("auth_failed", 1)
    # keys refused before a password guess do not shift the password's count
    p = Parser(now=lambda: NOW)
    seq = [line, line, "Nov 28 05:00:22 mx sshd[9]: Failed password for bob from 203.0.113.9 port 5 ssh2"]
    assert [p.parse(RawLine(t, "t", i)).attempts for i, t in enumerate(seq)] == [0, 0, 1]  # type: ignore[union-attr]


def test_mail_service_is_never_other_and_gives_way_to_the_protocol() -> None:
    from popwatch.store import StateStore

    p = Parser(now=lambda: NOW)
    lines = [
        "Nov 28 05:00:21 mx dovecot: auth: passwd-file(root,203.0.113.10,<Sx1>): unknown user",
        "Nov 28 05:00:22 mx dovecot: auth: passwd-file(root,203.0.113.10,<Sx1>): unknown user",
        ("Nov 28 05:00:30 mx dovecot: pop3-login: Disconnected (auth failed, 2 attempts in 9 secs): "
         "user=<root>, method=PLAIN, rip=203.0.113.10, lip=192.0.2.1, session=<Sx1>"),
    ]
    evs = [p.parse(RawLine(t, "t", i)) for i, t in enumerate(lines)]
    assert [e.service for e in evs if e] == ["mail", "mail", "pop3"]
    st = StateStore(clock=lambda: NOW)
    st.add_events([e for e in evs[:2] if e])
    assert st.snapshot().rows[0].services == ("mail",)
    st.add_events([evs[2]])  # type: ignore[list-item]
    assert st.snapshot().rows[0].services == ("pop3",)
    # a later attempt of a known session carries its protocol at once
    ev = p.parse(RawLine("Nov 28 05:00:31 mx dovecot: auth: passwd-file(root,203.0.113.10,<Sx1>): "
                         "Password mismatch", "t", 9))
    assert ev is not None and ev.service == "pop3"


def test_real_openssh92_policy_refusals_from_the_lab() -> None:
    """tests/data/parse/openssh92-policy-lab.log: OpenSSH 9.2p1 with UsePAM, PermitRootLogin no,
    AllowUsers/DenyUsers/DenyGroups, MaxAuthTries 3, attacked by hydra over IPv4 and IPv6
    (captured by tests/e2e/tools/capture_policy.py). Every connection counts as many attempts
    as it has `Failed password` lines (at least one if it failed at all), at the right address."""
    import re

    path = CORPUS.parent / "openssh92-policy-lab.log"
    p = Parser(now=lambda: NOW)
    att: Counter = Counter()
    failed: Counter = Counter()
    seen_fail: set[str] = set()
    kinds: Counter = Counter()
    for i, line in enumerate(path.open(encoding="utf-8"), 1):
        m = re.search(r" sshd\[(\d+)\]: ", line)
        assert m is not None
        pid = m.group(1)
        ev = p.parse(RawLine(line.rstrip("\n"), "lab", i))
        addr = re.search(r"(203\.0\.113\.\d+|2001:db8:[0-9a-f:]+)", line)
        if ev is not None:
            assert ev.ip == (addr.group(1) if addr else None), line
            kinds[ev.kind] += 1
            att[pid] += ev.attempts
            if ev.kind in FAILS:
                seen_fail.add(pid)
        if "Failed password" in line:
            failed[pid] += 1
    assert kinds["not_allowed"] >= 8 and kinds["invalid_user"] and kinds["auth_failed"]
    for pid in seen_fail:
        assert att[pid] == max(failed[pid], 1), pid


def test_dovecot_pam_lines_and_dovecot_lines_count_each_attempt_once() -> None:
    pam = ("Nov 28 05:00:2{i} mx auth: pam_unix(dovecot:auth): authentication failure; logname= uid=0 euid=0 "
           "tty=dovecot ruser=root rhost=203.0.113.20  user=root")
    verbose = ("Nov 28 05:00:2{i} mx dovecot: auth-worker(77): pam(root,203.0.113.20,<Pm1>): pam_authenticate() "
               "failed: Authentication failure (password mismatch?)")
    summary = ("Nov 28 05:00:29 mx dovecot: imap-login: Disconnected (auth failed, 3 attempts in 9 secs): "
               "user=<root>, method=PLAIN, rip=203.0.113.20, lip=192.0.2.1, session=<Pm1>")
    # auth_verbose off: three PAM lines, then the summary
    p = Parser(now=lambda: NOW)
    evs = [p.parse(RawLine(t, "t", 1)) for t in [pam.format(i=1), pam.format(i=2), pam.format(i=3), summary]]
    assert sum(e.attempts for e in evs if e) == 3
    assert [e.attempts for e in evs if e] == [1, 1, 1, 0]
    # auth_verbose on: each PAM line is followed by dovecot's line about the same attempt
    p = Parser(now=lambda: NOW)
    lines = [x.format(i=i) for i in range(1, 4) for x in (pam, verbose)] + [summary]
    evs = [p.parse(RawLine(t, "t", 1)) for t in lines]
    assert sum(e.attempts for e in evs if e) == 3
    assert evs[-1] is not None and evs[-1].service == "imap" and evs[-1].attempts == 0


def test_hostile_text_in_the_new_forms_never_yields_its_address() -> None:
    fake, real = "198.51.100.66", "203.0.113.5"
    hostile = [
        # user name (ruser= and user= under dovecot) holding a whole rhost=/user= tail
        (f"Nov 28 05:00:21 mx auth: pam_unix(dovecot:auth): authentication failure; logname= uid=0 euid=0 "
        f"tty=dovecot ruser=x rhost={fake}  user=y rhost={real}  user=x rhost={fake}  user=y"),
        (f"Nov 28 05:00:21 mx sshd[5]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 "
        f"tty=ssh ruser= rhost={real}  user=x rhost={fake}"),  # sshd sets no ruser: the first rhost
        # reverse-DNS name chosen by the attacker
        f"Nov 28 05:00:21 mx sshd[5]: refused connect from evil({fake}) ({real})",
        f"Nov 28 05:00:21 mx sshd[5]: refused connect from {fake}.example ({real})",
        # user names before the address (sshd writes the address last)
        f"Nov 28 05:00:21 mx sshd[5]: error: PAM: Authentication failure for x from {fake} via {fake} from {real}",
        (f"Nov 28 05:00:21 mx sshd[5]: error: PAM: authentication error for illegal user x from {fake} from {real} "
        f"via 192.0.2.1"),
        f"Nov 28 05:00:21 mx sshd[5]: Failed password for x from {fake} port 22 from {real} port 5",
        f"Nov 28 05:00:21 mx sshd[5]: Received disconnect from {real} port 5:3: from {fake} port 22: Auth fail",
        f"Nov 28 05:00:21 mx sshd[5]: Disconnecting: Too many authentication failures for x from {fake} port 1",
        (f"Nov 28 05:00:21 mx dovecot: imap-login: Disconnected (auth failed, 1 attempts): user=<x>, rip={fake}>, "
        f"method=PLAIN, rip={real}, lip=192.0.2.1"),
    ]
    for line in hostile:
        ev = Parser(now=lambda: NOW).parse(RawLine(line, "t", 1))
        assert ev is None or ev.ip in (None, real), line
        assert ev is None or fake not in (ev.host or ""), line


def test_count_publickey_config_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    import pytest

    from popwatch.config import ConfigError, from_dict

    assert from_dict({}).policy.count_publickey is False
    assert from_dict({"policy": {"count_publickey": True}}).policy.count_publickey is True
    with pytest.raises(ConfigError, match="count_publickey"):
        from_dict({"policy": {"count_publickey": "sometimes"}})
    repo = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "popwatch", "config", "--print-default"], capture_output=True,
                         text=True, env=env, timeout=60, check=True).stdout
    assert "\ncount_publickey = false\n" in out
    # scan honours it: the same refused key is a probe, or a counted failure
    log = tmp_path / "auth.log"
    log.write_text("Nov 28 05:00:21 mx sshd[9]: Failed publickey for bob from 203.0.113.9 port 5 ssh2: "
                   "RSA SHA256:x\n")
    conf = tmp_path / "popwatch.toml"
    conf.write_text("[policy]\ncount_publickey = true\n")
    plain = subprocess.run([sys.executable, "-m", "popwatch", "scan", "--all", "--json", str(log)],
                           capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    counted = subprocess.run([sys.executable, "-m", "popwatch", "--config", str(conf), "scan", "--json", str(log)],
                             capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    assert '"kind": "probe"' in plain and '"attempts": 0' in plain
    assert '"kind": "auth_failed"' in counted and '"attempts": 1' in counted


def test_real_dovecot23_pam_passdb_from_the_lab() -> None:
    """tests/data/parse/dovecot23-pam-lab.log: dovecot 2.3.19 with passdb pam and auth_verbose,
    hydra on pop3 (IPv4) and imap (IPv6); auth.log and mail.log merged in time order as a live
    reader sees them. Per address: PAM's line, dovecot's `pam_authenticate() failed` (under the
    2.3 `conn unix:auth-worker (...)` prefix) and the summary count each attempt once, and the
    attacker table shows the protocol, not `mail`."""
    import re

    from popwatch.store import StateStore

    path = CORPUS.parent / "dovecot23-pam-lab.log"
    p = Parser(now=lambda: NOW)
    att: Counter = Counter()
    truth: Counter = Counter()
    evs = []
    for i, line in enumerate(path.open(encoding="utf-8"), 1):
        ev = p.parse(RawLine(line.rstrip("\n"), "lab", i))
        m = re.search(r"\(auth failed, (\d+) attempts.* rip=([^,]+),", line)
        if m:
            truth[m.group(2)] += int(m.group(1))
        if ev is not None:
            evs.append(ev)
            att[ev.ip] += ev.attempts
    assert len(truth) == 2 and all(truth.values())
    assert {ip: n for ip, n in att.items() if n} == dict(truth)
    st = StateStore(clock=lambda: NOW)
    st.add_events(evs)
    assert {r.ip: r.services for r in st.snapshot().rows} == {"203.0.113.10": ("pop3",), "2001:db8:3::20": ("imap",)}


def test_dovecot_1x_log_path_prefix() -> None:
    """dovecot 1.x failures.c writes log_prefix, then log_timestamp, then the level."""
    p = Parser(now=lambda: NOW)
    bsd = p.parse(RawLine("dovecot: Nov 28 05:00:21 Info: auth(default): passwd-file(bob,203.0.113.9): "
                          "unknown user", "t", 1))
    iso = p.parse(RawLine("dovecot: 2026-11-28 05:00:21 Info: pop3-login: Aborted login (2 authentication "
                          "attempts): user=<bob>, method=PLAIN, rip=203.0.113.8, lip=192.0.2.1", "t", 2))
    assert bsd is not None and (bsd.kind, bsd.ip, bsd.user) == ("invalid_user", "203.0.113.9", "bob")
    assert iso is not None and (iso.kind, iso.ip, iso.attempts) == ("auth_failed", "203.0.113.8", 2)
    assert bsd.ts == iso.ts


def test_macos_log_show_timestamps() -> None:
    """``log show --style syslog``: space-separated ISO time with a +HHMM zone, one or two spaces."""
    p = Parser(now=lambda: NOW)
    a = p.parse(RawLine("2026-11-28 05:00:21.801612+0000  mx sshd[3186]: error: PAM: unknown user for "
                        "illegal user bad from 203.0.113.7", "t", 1))
    b = p.parse(RawLine("2026-11-28 05:00:21.180218+0000 mx sshd[67]: Invalid user git from 203.0.113.6 "
                        "port 35968", "t", 2))
    assert a is not None and (a.kind, a.ip, a.user) == ("invalid_user", "203.0.113.7", "bad")
    assert b is not None and (b.kind, b.ip) == ("invalid_user", "203.0.113.6")
    assert int(a.ts) == int(b.ts) == 1795842021


def test_repeated_message_keeps_attacker_text_out() -> None:
    p = Parser(now=lambda: NOW)
    ev = p.parse(RawLine("Nov 28 05:00:21 mx sshd[7]: message repeated 2 times: [ Failed password for invalid "
                         "user x from 198.51.100.66 port 22 ssh2 from 203.0.113.5 port 5 ssh2]", "t", 1))
    assert ev is not None and (ev.ip, ev.attempts) == ("203.0.113.5", 2)
    # only rsyslog writes the wrapper, once; a nested or unterminated one is not a line it writes
    for msg in (("message repeated 2 times: [ message repeated 2 times: [ Failed password for root from "
                 "203.0.113.5 port 5 ssh2]]"),
                "message repeated 2 times: [ Failed password for root from 203.0.113.5 port 5 ssh2",
                "message repeated x times: [ Invalid user a from 203.0.113.5]"):
        assert p.parse(RawLine(f"Nov 28 05:00:21 mx sshd[8]: {msg}", "t", 2)) is None, msg


def test_bsd_syslogd_last_message_repeated() -> None:
    """sysklogd/FreeBSD/macOS syslogd fold identical lines into ``HOST last message repeated N
    times``, right after the line: that line's attempt N more times, on the live and scan paths."""
    lines = ["Nov  8 05:00:21 mx sshd[5]: Failed password for root from 203.0.113.9 port 4000 ssh2",
             "Nov  8 05:00:51 mx last message repeated 4 times",
             ("Nov  8 05:01:00 mx postfix/smtpd[6]: warning: unknown[203.0.113.8]: SASL LOGIN authentication "
              "failed: UGFzc3dvcmQ6"),
             "Nov  8 05:01:30 mx --- last message repeated 2 times ---",
             "Nov  8 05:01:31 mx --- last message repeated 2 times ---",  # repeats no repeat line
             "Nov  8 05:01:40 mx sshd[7]: Failed password for root from 203.0.113.7 port 4001 ssh2",
             "Nov  8 05:01:50 other last message repeated 3 times"]  # another host's: not this line
    p = Parser(now=lambda: NOW)
    live = [p.parse(RawLine(t, "t", i)) for i, t in enumerate(lines, 1)]
    got = [(e.ip, e.attempts, e.lineno) for e in live if e is not None]
    assert got == [("203.0.113.9", 1, 1), ("203.0.113.9", 4, 2), ("203.0.113.8", 1, 3), ("203.0.113.8", 2, 4),
                   ("203.0.113.7", 1, 6)]
    assert live[1] is not None and live[0] is not None and live[1].ts - live[0].ts == 30
    many = list(Parser(now=lambda: NOW).parse_many(lines, "t", 1))
    assert many == [e for e in live if e is not None]


def test_rsyslog_repeated_message_reduction_real_output() -> None:
    """rsyslogd (Debian 12) with ``$RepeatedMsgReduction on``, fed four identical sshd
    messages by logger(1) and then the disconnect: 4 attempts in all, none counted twice."""
    path = CORPUS.parent / "rsyslog-repeatedmsgreduction-lab.log"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert "message repeated 3 times: [ Failed password" in lines[1]
    evs = list(Parser(now=lambda: NOW).parse_many(lines, "lab", 1))
    assert [(e.kind, e.ip, e.attempts) for e in evs] == [
        ("auth_failed", "203.0.113.9", 1), ("auth_failed", "203.0.113.9", 3), ("auth_failed", "203.0.113.9", 0)]
