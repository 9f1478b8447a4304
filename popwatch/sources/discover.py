"""Find the log sources a host has, for ``popwatch`` run without ``--log``.

Files: /var/log/mail.log and /var/log/auth.log (Debian, Ubuntu), /var/log/maillog and
/var/log/secure (RHEL family), and dovecot's own ``log_path``/``info_log_path`` when doveconf
says they are files. journald: when none of the syslog files exists (Debian 12 without
rsyslog) or when asked for. ``root`` and the tool names are injectable for tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from .base import Source
from .journal import JournalSource
from .tail import FileSource, make_file_sources

#: syslog files, relative to the root, in the order the header shows them
SYSLOG_FILES = ("var/log/mail.log", "var/log/maillog", "var/log/auth.log", "var/log/secure")


def dovecot_log_paths(doveconf: str = "doveconf", timeout: float = 5.0) -> list[str]:
    """Absolute file paths from ``doveconf -h log_path info_log_path`` (none when dovecot
    logs to syslog, to a device such as /dev/stderr, or when doveconf fails)."""
    exe = shutil.which(doveconf)
    if exe is None:
        return []
    try:
        r = subprocess.run([exe, "-h", "log_path", "info_log_path"], capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return []
    if r.returncode != 0:
        return []
    out: list[str] = []
    for value in r.stdout.splitlines()[:2]:
        v = value.strip()
        if v.startswith("/") and not v.startswith("/dev/") and v not in out:
            out.append(v)
    return out


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def discover(cfg_logs: Sequence[str] = (), journal: bool | None = None, *, root: str = "/",
             doveconf: str | None = "doveconf", journalctl: str = "journalctl",
             **source_kw: Any) -> list[Source]:
    """The sources to follow.

    ``cfg_logs`` (from ``--log``/config) wins: those files or globs, plus journald only when
    ``journal`` is True. Without them: the syslog files that exist, dovecot's log files
    (followed even before they exist: dovecot creates them on its first message), and journald
    when ``journal`` is True, or when it is None and no syslog file exists and ``journalctl`` is
    installed. ``source_kw`` (``from_start``, ``backfill_lines``...) goes to every source.
    """
    journal_kw = {k: v for k, v in source_kw.items()
                  if k in ("from_start", "backfill_lines", "backfill_seconds", "line_cap")}
    if cfg_logs:
        sources = make_file_sources(cfg_logs, **source_kw)
        if journal:
            sources.append(JournalSource(journalctl=journalctl, **journal_kw))
        return sources
    paths = [p for rel in SYSLOG_FILES if os.path.exists(p := _under(root, rel))]
    found_syslog = bool(paths)
    if doveconf:
        for p in dovecot_log_paths(doveconf):
            q = _under(root, p)
            if q not in paths:
                paths.append(q)
    sources = [FileSource(p, **source_kw) for p in paths]  # literal, never globs
    if journal or (journal is None and not found_syslog and shutil.which(journalctl)):
        sources.append(JournalSource(journalctl=journalctl, **journal_kw))
    return sources
