"""``popwatch scan FILE... [--json] [--all]``: offline detection over log files, like
fail2ban-regex but for every supported service at once.

Files are read in binary chunks, decoded with invalid UTF-8 replaced, and split into lines;
memory per line is bounded (a 1 GB line never sits in memory: past ``4 * LINE_CAP`` bytes
without a newline the rest of that line is skipped, and the parser ignores messages over
8 KiB). ``.gz`` files are decompressed on the fly; ``-`` is standard input.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from ..model import FAILURE_KINDS, AuthEvent, iso
from ..parse import Parser

CHUNK = 1 << 20
#: line length unit for the reader's bound (the parser ignores messages over 8 KiB anyway)
LINE_CAP = 64 * 1024
#: show a progress bar for files bigger than this (when stderr is a terminal)
PROGRESS_MIN = 4 * 1024 * 1024


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "scan", parents=[common],
        help="parse log files offline and report failed logins per address",
        description="Parse auth/mail logs (plain, .gz, or - for stdin) offline: sshd, dovecot, "
                    "postfix SASL, courier. Prints a summary per address and per service, or "
                    "one JSON object per failure with --json.")
    p.add_argument("files", nargs="+", metavar="FILE", help="log file, FILE.gz, or - for stdin")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line for each line that reports a failure (ts, "
                        "service, ip, user, kind, attempts, source, lineno, line); attempts is 0 "
                        "on a line about an attempt another line counted already: sum attempts, "
                        "do not count lines")
    p.add_argument("--all", action="store_true",
                   help="also report successes and probes (scanners, refused keys)")
    from ..whatif import proposal_arg
    p.add_argument("--what-if", type=proposal_arg, metavar="PROPOSAL",
                   help="replay the files under a proposed policy or port limit instead of the "
                        "summary: which addresses would have been banned, after how many attempts, "
                        "and who also logged in, e.g. maxretry=5,findtime=10m or "
                        "port=110,mode=global,rate=1/second,burst=5 (with --json: one JSON object)")
    p.set_defaults(func=run)


# -- reading -------------------------------------------------------------------------------

class _Progress:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, name: str, total: int) -> None:
        self.name = name[-30:]
        self.total = max(total, 1)
        self.last = 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < 0.1:
            return
        self.last = now
        frac = min(done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{self.name} [{bar:<30}] {frac * 100:5.1f}% {done / 1e6:8.1f} MB")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _open(path: str) -> tuple[IO[bytes], IO[bytes] | None, int]:
    """(stream to read, raw file for progress, size in bytes or 0)."""
    if path == "-":
        return sys.stdin.buffer, None, 0
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    size = os.fstat(raw.fileno()).st_size
    head = raw.read(2)
    raw.seek(0)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw, size  # type: ignore[return-value]  # GzipFile is an IO[bytes] reader
    return raw, raw, size


def iter_blocks(stream: IO[bytes], cap: int = LINE_CAP, on_chunk=None) -> Iterator[str]:
    """Decoded blocks of whole lines joined by ``\\n`` (no trailing newline).

    A line with no newline within ``4 * cap`` bytes is cut: its start comes as a block of its
    own and the rest, up to its newline, is dropped, so memory stays bounded.
    """
    carry = b""
    skipping = False  # inside an over-long line, dropping bytes up to its newline
    read = stream.read
    while True:
        chunk = read(CHUNK)
        if not chunk:
            break
        if on_chunk is not None:
            on_chunk()
        if skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                continue
            chunk = chunk[nl + 1:]
            skipping = False
        buf = carry + chunk if carry else chunk
        last = buf.rfind(b"\n")
        if last < 0:
            carry = buf
        else:
            carry = buf[last + 1:]
            yield buf[:last].decode("utf-8", "replace")
        if len(carry) > cap * 4:
            yield carry[:cap * 4].decode("utf-8", "replace")[:cap]
            carry = b""
            skipping = True
    if carry and not skipping:
        yield carry.decode("utf-8", "replace")


def iter_lines(stream: IO[bytes], cap: int = LINE_CAP, on_chunk=None) -> Iterator[str]:
    """Decoded lines (without the newline), each at most ``cap`` characters."""
    for block in iter_blocks(stream, cap, on_chunk):
        for line in block.split("\n"):
            yield line[:cap] if len(line) > cap else line


# -- JSON ----------------------------------------------------------------------------------

_q = json.encoder.encode_basestring_ascii


_iso_minutes: dict[int, str] = {}


def fast_iso(ts: float) -> str | None:
    """``model.iso(ts)`` (UTC, microseconds) with the minute's text cached; a test holds them equal."""
    if not 0 <= ts < 1e11:
        return iso(ts)
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)
    sec = int(whole)
    if us >= 1_000_000:
        sec += 1
        us -= 1_000_000
    minute, s = divmod(sec, 60)
    base = _iso_minutes.get(minute)
    if base is None:
        if len(_iso_minutes) > 4096:
            _iso_minutes.clear()
        base = _iso_minutes[minute] = iso(float(minute * 60))[:16]  # type: ignore[index]  # iso() returns a string for a number
    if us:
        return f"{base}:{s:02d}.{us:06d}+00:00"
    return f"{base}:{s:02d}+00:00"


def event_json(ev: AuthEvent) -> str:
    """``json.dumps(ev.to_json())``, built directly (the same text; a test holds them equal)."""
    ts = fast_iso(ev.ts)
    ip, user, lineno = ev.ip, ev.user, ev.lineno
    s = (f'{{"ts": {"null" if ts is None else _q(ts)}, "service": {_q(ev.service)}, '
         f'"ip": {"null" if ip is None else _q(ip)}, '
         f'"user": {"null" if user is None else _q(user)}, "kind": {_q(ev.kind)}, '
         f'"attempts": {int(ev.attempts)}, "source": {_q(ev.source)}, '
         f'"lineno": {"null" if lineno is None else int(lineno)}, "line": {_q(ev.line)}')
    if ev.host is not None:
        s += f', "host": {_q(ev.host)}'
    if ev.session is not None:
        s += f', "session": {_q(ev.session)}'
    return s + "}"


# -- summary -------------------------------------------------------------------------------

@dataclass
class _IpStats:
    failures: int = 0
    users: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)
    first: float = float("inf")
    last: float = float("-inf")


@dataclass
class _Summary:
    lines: int = 0
    events: int = 0
    per_ip: dict[str, _IpStats] = field(default_factory=dict)
    per_service: dict[str, list] = field(default_factory=dict)  # service -> [failures, ips set]
    no_ip: int = 0
    successes: int = 0
    probes: int = 0
    #: --all: per address, probes (scanners, refused keys): address -> [count, users]
    show_probes: bool = False
    probe_ips: dict[str, list] = field(default_factory=dict)

    def add(self, ev: AuthEvent) -> None:
        self.events += 1
        if ev.kind == "success":
            self.successes += 1
            return
        if ev.kind not in FAILURE_KINDS:
            self.probes += 1
            if self.show_probes and ev.ip is not None and len(self.probe_ips) < 1_000_000:
                pr = self.probe_ips.setdefault(ev.ip, [0, set()])
                pr[0] += 1
                if ev.user is not None and len(pr[1]) < 100:
                    pr[1].add(ev.user)
            return
        if ev.attempts <= 0:
            return
        key = ev.ip if ev.ip is not None else (f"{ev.host} (name)" if ev.host else None)
        if key is None:
            self.no_ip += ev.attempts
            return
        st = self.per_ip.get(key)
        if st is None:
            st = self.per_ip[key] = _IpStats()
            if len(self.per_ip) > 1_000_000:  # bounded even on absurd input
                self.per_ip.pop(next(iter(self.per_ip)))
        st.failures += ev.attempts
        if ev.user is not None and len(st.users) < 1000:
            st.users.add(ev.user)
        st.services.add(ev.service)
        st.first = min(st.first, ev.ts)
        st.last = max(st.last, ev.ts)
        ps = self.per_service.setdefault(ev.service, [0, set()])
        ps[0] += ev.attempts
        if len(ps[1]) < 1_000_000:
            ps[1].add(key)

    def render(self, out: IO[str], top: int = 50) -> None:
        w = out.write
        rows = sorted(self.per_ip.items(), key=lambda kv: (-kv[1].failures, kv[0]))
        total = sum(s.failures for _, s in rows) + self.no_ip
        w(f"{self.lines} lines, {total} failed attempts from {len(rows)} addresses"
          f" ({self.successes} successful logins, {self.probes} probes)\n\n")
        if rows:
            w(f"{'ADDRESS':<40} {'FAILS':>7} {'USERS':>5}  {'SERVICES':<16} {'FIRST SEEN':<19}  "
              f"{'LAST SEEN':<19}  SOME USERS\n")
            for ip, s in rows[:top]:
                users = sorted(s.users)
                some = ", ".join(u or "''" for u in users[:3]) + (" ..." if len(users) > 3 else "")
                svcs = s.services
                if "mail" in svcs and len(svcs) > 1 and not svcs <= {"mail", "ssh", "other"}:
                    svcs = svcs - {"mail"}  # the protocol became known (dovecot's summary line)
                w(f"{ip:<40} {s.failures:>7} {len(users):>5}  {','.join(sorted(svcs)):<16} "
                  f"{_short(s.first)}  {_short(s.last)}  {some}\n")
            if len(rows) > top:
                w(f"... {len(rows) - top} more addresses (use --json for all)\n")
            w("\n")
        if self.per_service:
            w(f"{'SERVICE':<12} {'FAILS':>8} {'ADDRESSES':>9}\n")
            for svc, (fails, ips) in sorted(self.per_service.items(), key=lambda kv: -kv[1][0]):
                w(f"{svc:<12} {fails:>8} {len(ips):>9}\n")
        if self.no_ip:
            w(f"\n{self.no_ip} failed attempts had no usable address\n")
        if self.probe_ips:
            prow = sorted(self.probe_ips.items(), key=lambda kv: (-kv[1][0], kv[0]))
            w(f"\n{'PROBES (not counted)':<40} {'PROBES':>7}  SOME USERS (refused keys)\n")
            for ip, (n, users) in prow[:top]:
                some = ", ".join(sorted(users)[:3]) + (" ..." if len(users) > 3 else "")
                w(f"{ip:<40} {n:>7}  {some}\n")
            if len(prow) > top:
                w(f"... {len(prow) - top} more probing addresses\n")


def _short(ts: float) -> str:
    s = iso(ts) or ""
    return s[:19].replace("T", " ")


# -- command -------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    cfg0 = getattr(args, "cfg", None)
    parser = Parser(now=time.time, count_publickey=bool(cfg0 is not None and cfg0.policy.count_publickey))
    as_json = bool(args.json)
    show_all = bool(args.all)
    summary = _Summary()
    summary.show_probes = show_all
    out = sys.stdout
    failure_kinds = FAILURE_KINDS
    wif = None
    if getattr(args, "what_if", None):
        from ..whatif import ScanWhatIf
        wif = ScanWhatIf(args.what_if)
        as_json = False  # --json formats the report instead
    for path in args.files:
        try:
            stream, raw, size = _open(path)
        except OSError as e:
            print(f"popwatch: scan: cannot read {path}: {e.strerror or e}", file=sys.stderr)
            return 2
        source = "stdin" if path == "-" else path
        progress = None
        on_chunk = None
        if raw is not None and size > PROGRESS_MIN and sys.stderr.isatty():
            progress = _Progress(source, size)
            on_chunk = lambda: progress.update(raw.tell())  # noqa: E731, B023 - called only within this iteration
        parse_many = parser.parse_many
        encode = event_json
        buf: list[str] = []
        lineno = 0  # lines before the current block
        try:
            for block in iter_blocks(stream, on_chunk=on_chunk):
                if "\r" in block:  # CRLF files
                    block = block.replace("\r\n", "\n")
                    if block.endswith("\r"):
                        block = block[:-1]
                lines = block.split("\n")
                for ev in parse_many(lines, source, lineno + 1):
                    if wif is not None:
                        wif.add(ev)
                    elif as_json:
                        if show_all or ev.kind in failure_kinds:
                            buf.append(encode(ev))
                            if len(buf) >= 512:
                                buf.append("")
                                out.write("\n".join(buf))
                                buf.clear()
                    else:
                        summary.add(ev)
                lineno += len(lines)
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
            print(f"popwatch: scan: error reading {path} after line {lineno}: {e}", file=sys.stderr)
            return 2
        finally:
            if buf:
                buf.append("")
                out.write("\n".join(buf))
            if progress is not None and raw is not None:
                progress.update(size, final=True)
            if stream is not sys.stdin.buffer:
                stream.close()
                if raw is not None and raw is not stream:
                    raw.close()
        summary.lines += lineno
    if wif is not None:
        cfg = getattr(args, "cfg", None)
        from ..config import PolicyConfig
        pol = cfg.policy if cfg is not None else PolicyConfig()
        rep = wif.report(pol, pol.allow, getattr(cfg, "campaign", None))
        out.write(json.dumps(rep.to_json()) + "\n" if args.json else "\n".join(rep.lines(limit=50)) + "\n")
    elif not as_json:
        summary.render(out)
    out.flush()
    return 0
