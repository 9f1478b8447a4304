"""Source discovery on a fake root, with fake doveconf/journalctl tools."""

from __future__ import annotations

import stat
from pathlib import Path

from popwatch.sources.discover import discover, dovecot_log_paths
from popwatch.sources.journal import JournalSource
from popwatch.sources.tail import FileSource


def tool(tmp_path: Path, name: str, body: str) -> str:
    p = tmp_path / "bin" / name
    p.parent.mkdir(exist_ok=True)
    p.write_text(f"#!/bin/sh\n{body}\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(p)


def names(sources: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(type(s).__name__, s.name) for s in sources]


def make_root(tmp_path: Path, *files: str) -> Path:
    root = tmp_path / "root"
    (root / "var/log").mkdir(parents=True)
    for f in files:
        (root / "var/log" / f).write_text("")
    return root


def test_debian_with_rsyslog_follows_the_files_and_not_the_journal(tmp_path) -> None:
    root = make_root(tmp_path, "auth.log", "mail.log", "syslog")
    jc = tool(tmp_path, "journalctl", "exit 0")
    got = discover([], None, root=str(root), doveconf=None, journalctl=jc)
    assert names(got) == [("FileSource", f"{root}/var/log/mail.log"),
                          ("FileSource", f"{root}/var/log/auth.log")]


def test_rhel_names(tmp_path) -> None:
    root = make_root(tmp_path, "secure", "maillog")
    got = discover([], None, root=str(root), doveconf=None, journalctl="/nonexistent")
    assert names(got) == [("FileSource", f"{root}/var/log/maillog"),
                          ("FileSource", f"{root}/var/log/secure")]


def test_no_syslog_files_means_journald(tmp_path) -> None:
    root = make_root(tmp_path)
    jc = tool(tmp_path, "journalctl", "exit 0")
    got = discover([], None, root=str(root), doveconf=None, journalctl=jc, backfill_lines=5)
    assert names(got) == [("JournalSource", "journal")]
    assert isinstance(got[0], JournalSource)
    assert got[0].journalctl == jc and got[0].backfill_lines == 5


def test_no_files_and_no_journalctl_finds_nothing(tmp_path) -> None:
    root = make_root(tmp_path)
    assert discover([], None, root=str(root), doveconf=None, journalctl="/nonexistent") == []


def test_journal_true_adds_it_beside_the_files(tmp_path) -> None:
    root = make_root(tmp_path, "auth.log")
    got = discover([], True, root=str(root), doveconf=None, journalctl="/nonexistent")
    assert names(got) == [("FileSource", f"{root}/var/log/auth.log"), ("JournalSource", "journal")]


def test_journal_false_never_adds_it(tmp_path) -> None:
    root = make_root(tmp_path)
    jc = tool(tmp_path, "journalctl", "exit 0")
    assert discover([], False, root=str(root), doveconf=None, journalctl=jc) == []


def test_configured_logs_win(tmp_path) -> None:
    root = make_root(tmp_path, "auth.log")
    got = discover(["/srv/log/a.log", "/srv/log/*.log"], None, root=str(root), doveconf=None)
    assert names(got) == [("FileSource", "/srv/log/a.log"), ("GlobSource", "/srv/log/*.log")]
    got = discover(["/srv/log/a.log"], True, root=str(root), doveconf=None, journalctl="/x")
    assert names(got) == [("FileSource", "/srv/log/a.log"), ("JournalSource", "journal")]


def test_dovecot_log_path_files_are_followed_even_before_they_exist(tmp_path) -> None:
    root = make_root(tmp_path, "mail.log")
    dc = tool(tmp_path, "doveconf",
              'test "$1 $2 $3" = "-h log_path info_log_path" || exit 2\n'
              'echo /var/log/dovecot.log; echo /var/log/dovecot-info.log')
    got = discover([], None, root=str(root), doveconf=dc, journalctl="/nonexistent",
                   from_start=True)
    assert names(got) == [("FileSource", f"{root}/var/log/mail.log"),
                          ("FileSource", f"{root}/var/log/dovecot.log"),
                          ("FileSource", f"{root}/var/log/dovecot-info.log")]
    assert all(isinstance(s, FileSource) and s.from_start for s in got)


def test_dovecot_syslog_devices_and_failures_are_ignored(tmp_path) -> None:
    assert dovecot_log_paths(tool(tmp_path, "dc1", "echo syslog; echo")) == []
    assert dovecot_log_paths(tool(tmp_path, "dc2", "echo /dev/stderr; echo /var/log/d.log")) == [
        "/var/log/d.log"]
    assert dovecot_log_paths(tool(tmp_path, "dc3", "echo /var/log/d.log; exit 1")) == []
    assert dovecot_log_paths(tool(tmp_path, "dc4", "echo /var/log/d.log; echo /var/log/d.log")) == [
        "/var/log/d.log"]
    assert dovecot_log_paths("/nonexistent/doveconf") == []

