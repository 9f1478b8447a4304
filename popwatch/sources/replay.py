"""Replay sources: a fixed list of lines (tests) and the live demo scenario.

The demo replays *real* daemon output: the sessions in ``popwatch/data/samples`` (captured from
dovecot 2.3 and OpenSSH 9.2 under a hydra attack) are cut into per-connection scripts, and each
simulated connection replays one script with its address, user, port, pid and session
rewritten (documentation addresses only). Every connection first goes through the simulated
firewall, so bans and limits change what gets logged, as on a real server.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources

from ..conns import PortConns, summarize
from ..firewall.sim import SimFirewall
from ..model import RawLine, SourceHealth
from .base import Source


class ReplaySource(Source):
    """Replays a fixed list of lines once, in batches (tests, ``popwatch scan`` of a list)."""

    def __init__(self, lines: Iterable[str], name: str = "replay", batch: int = 500) -> None:
        self.name = name
        self._lines = list(lines)
        self._batch = batch
        self._sent = 0

    async def batches(self) -> AsyncIterator[list[RawLine]]:
        for i in range(0, len(self._lines), self._batch):
            chunk = self._lines[i:i + self._batch]
            yield [RawLine(t, self.name, i + j + 1) for j, t in enumerate(chunk)]
            self._sent = i + len(chunk)
            await asyncio.sleep(0)

    def health(self) -> SourceHealth:
        return SourceHealth(self.name, "replay", f"{self._sent}/{len(self._lines)} lines", self._sent)


# --------------------------------------------------------------------------- the demo

class DemoClock:
    """Scenario time: starts at ``start`` (epoch) and runs ``speed`` times faster than real time.
    ``frozen=True`` makes it advance only through :meth:`advance` (tests, screenshots)."""

    def __init__(self, start: float | None = None, speed: float = 1.0, frozen: bool = False) -> None:
        self.start = time.time() if start is None else start
        self.speed = speed
        self.frozen = frozen
        self._m0 = time.monotonic()
        self._offset = 0.0

    def __call__(self) -> float:
        if self.frozen:
            return self.start + self._offset
        return self.start + (time.monotonic() - self._m0) * self.speed + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += seconds


_REMOTE = re.compile(r"(?:203\.0\.113\.\d+|198\.51\.100\.\d+|2001:db8::(?!1\b)[0-9a-f]+)")
_SUBS_USER = [
    re.compile(r"(Invalid user )(\S+)( from )"),
    re.compile(r"(for (?:invalid user )?)(\S+)( from )"),
    re.compile(r"((?:invalid|authenticating) user )(\S+)( \S+ port )"),
    re.compile(r"(  user=)(\S+)$"),
    re.compile(r"(user=<)([^>]*)(>)"),
]
_PORT = re.compile(r"\bport \d+")
_SESSION = re.compile(r"session=<[^>]*>")
_PREFIX = re.compile(r"^\S+ \S+ (\S+?)(?:\[\d+\])?: (.*)$")


def _load_sample(name: str) -> list[str]:
    base = resources.files("popwatch") / "data" / "samples"
    return (base / name).read_text(encoding="utf-8").splitlines()


@dataclass
class _Script:
    tag: str                 # sshd | dovecot
    msgs: list[str]          # messages with the original remote address still in
    old_ip: str


def _scripts() -> dict[str, list[_Script]]:
    """Cut the real captures into per-connection scripts, by kind."""
    out: dict[str, list[_Script]] = {"ssh_fail": [], "ssh_ok": [], "pop3_fail": [], "imap_fail": [],
                                     "pop3_ok": [], "imap_ok": [], "probe": []}
    by_pid: dict[str, list[str]] = {}
    for line in _load_sample("debian12-rsyslog/auth.log"):
        m = re.match(r"^\S+ \S+ sshd\[(\d+)\]: (.*)$", line)
        if m:
            by_pid.setdefault(m.group(1), []).append(m.group(2))
    for msgs in by_pid.values():
        ip = next((m.group() for s in msgs if (m := _REMOTE.search(s))), None)
        if ip is None:
            continue
        text = "\n".join(msgs)
        if "Accepted " in text:
            kind = "ssh_ok"
        elif "Failed password" in text:
            kind = "ssh_fail"
        elif "kex_exchange_identification" in text or "Unable to negotiate" in text or "banner exchange" in text:
            kind = "probe"
        else:
            continue
        out[kind].append(_Script("sshd", msgs, ip))
    mail = _load_sample("debian12-rsyslog/mail.log") + _load_sample("debian12-rsyslog-hydra-full/mail.log")
    for line in mail:
        m = _PREFIX.match(line)
        if not m or m.group(1) != "dovecot":
            continue
        msg = m.group(2)
        ipm = _REMOTE.search(msg)
        if ipm is None:
            continue
        svc = "pop3" if msg.startswith("pop3-login") else "imap" if msg.startswith("imap-login") else None
        if svc is None:
            continue
        if "(auth failed," in msg:
            out[f"{svc}_fail"].append(_Script("dovecot", [msg], ipm.group()))
        elif "Login: user=" in msg:
            out[f"{svc}_ok"].append(_Script("dovecot", [msg], ipm.group()))
    # the 2009 form (dovecot 1.x), as in the original report, with a documentation address
    out["pop3_2009"] = [_Script("dovecot", [
        "pop3-login: Aborted login: user=<root>, method=PLAIN, rip=::ffff:203.0.113.104, "
        "lip=::ffff:192.0.2.1, secured"], "203.0.113.104")]
    return out


USERS = ["root", "admin", "test", "user", "www", "webmaster", "oracle", "info", "postmaster",
         "sales", "support", "guest", "mysql", "backup", "office", "contact", "billing", "mail"]
PORTS = {"ssh": 22, "pop3": 110, "imap": 143}
#: seconds a simulated connection stays established (the socket table the demo shows): guessers
#: wait out the daemons' failure delays, a probe hangs up at once
HOLD = {"ssh_fail": 6.0, "pop3_fail": 4.0, "pop3_2009": 3.0, "imap_fail": 6.0, "probe": 0.5}


@dataclass
class Actor:
    """One simulated client: ``rate(t)`` connections per second at scenario second ``t``."""

    ip: str
    service: str                # ssh | pop3 | imap
    script: str                 # key into the scripts table
    rate: Callable[[float], float]
    users: list[str] = field(default_factory=lambda: list(USERS))
    next_at: float = 0.0
    attempts: int = 0
    accepted: int = 0
    dropped: int = 0


def _wave(base: float, amp: float, period: float, start: float = 0.0, stop: float = math.inf,
          phase: float = 0.0) -> Callable[[float], float]:
    def rate(t: float) -> float:
        if t < start or t >= stop:
            return 0.0
        return max(0.0, base + amp * math.sin(2 * math.pi * (t + phase) / period))
    return rate


def default_actors(rng: random.Random) -> list[Actor]:
    """A few slow attackers, one loud one, a spread-out botnet, legitimate users."""
    actors = [
        # the loud one: hydra against pop3, in waves
        Actor("203.0.113.66", "pop3", "pop3_fail", _wave(4.0, 2.5, 40.0)),
        # the 2009 attacker, same log form as the original report
        Actor("203.0.113.104", "pop3", "pop3_2009", _wave(1.0, 0.6, 25.0, start=4.0), users=["root"]),
        # slow ssh guessers
        Actor("198.51.100.23", "ssh", "ssh_fail", _wave(0.5, 0.3, 60.0, start=2.0)),
        Actor("198.51.100.77", "ssh", "ssh_fail", _wave(0.3, 0.2, 90.0, start=12.0, phase=20)),
        Actor("203.0.113.9", "ssh", "ssh_fail", _wave(0.8, 0.5, 30.0, start=30.0)),
        Actor("2001:db8:bad::17", "imap", "imap_fail", _wave(0.6, 0.4, 50.0, start=8.0)),
        Actor("203.0.113.201", "ssh", "probe", _wave(0.1, 0.05, 60.0, start=15.0)),
    ]
    # a spread-out botnet on one mailbox: each address slow, together visible
    for i in range(24):
        ip = f"198.51.100.{130 + i * 5}"
        actors.append(Actor(ip, "imap", "imap_fail", _wave(1 / 45, 0.0, 1.0, start=20.0 + i * 2),
                            users=["info", "sales", "info"]))
    # legitimate users checking mail (they suffer when a global limit is exhausted)
    for i, user in enumerate(["alice", "bob", "carol", "dave", "erin", "frank"]):
        svc = "pop3" if i % 2 == 0 else "imap"
        actors.append(Actor(f"192.0.2.{50 + i}", svc, f"{svc}_ok", _wave(1 / 20, 0.0, 1.0), users=[user]))
    for a in actors:
        a.next_at = rng.uniform(0, 2.0)
    return actors


class Scenario:
    """Generates the demo's log lines, driving connections through the simulated firewall."""

    def __init__(self, sim: SimFirewall, clock: Callable[[], float], *, seed: int = 2009,
                 host: str = "mail1", actors: list[Actor] | None = None) -> None:
        self.sim = sim
        self.clock = clock
        self.host = host
        self.rng = random.Random(seed)
        self.scripts = _scripts()
        self.actors = actors if actors is not None else default_actors(self.rng)
        self.t0 = clock()
        self._pid = 40000
        self.lines_out = 0
        #: established simulated connections: (ends at, ip, port), a heap
        self._open: list[tuple[float, str, int]] = []
        self._open_lock = threading.Lock()

    def _render(self, ts: float, tag: str, pid: int | None, msg: str) -> str:
        stamp = datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")
        who = f"{tag}[{pid}]" if pid is not None else tag
        return f"{stamp} {self.host} {who}: {msg}"

    def _rewrite(self, msg: str, old_ip: str, ip: str, user: str, port: int) -> str:
        msg = msg.replace(old_ip, ip)
        for rx in _SUBS_USER:
            msg = rx.sub(lambda m: m.group(1) + user + (m.group(3) if m.lastindex and m.lastindex >= 3 else ""), msg)
        msg = _PORT.sub(f"port {port}", msg)
        sess = "".join(self.rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
                       for _ in range(16))
        msg = _SESSION.sub(f"session=<{sess}>", msg)
        if "attempts in" in msg:
            n = self.rng.choice((1, 1, 2, 3))
            msg = re.sub(r"\(auth failed, \d+ attempts in \d+ secs\)",
                         f"(auth failed, {n} attempts in {self.rng.randint(2, 20)} secs)", msg)
        return msg

    def _connection(self, a: Actor, ts: float) -> list[str]:
        scripts = self.scripts.get(a.script) or []
        if not scripts:
            return []
        s = self.rng.choice(scripts)
        user = self.rng.choice(a.users)
        port = self.rng.randint(32768, 60999)
        self._pid += self.rng.randint(1, 7)
        pid = self._pid if s.tag == "sshd" else None
        out = []
        for i, msg in enumerate(s.msgs):
            out.append(self._render(ts + i * 0.002, s.tag, pid, self._rewrite(msg, s.old_ip, a.ip, user, port)))
        return out

    def until(self, now: float) -> list[str]:
        """All lines due up to scenario wall time ``now``."""
        t_now = now - self.t0
        out: list[str] = []
        for a in self.actors:
            guard = 0
            while a.next_at <= t_now and guard < 10_000:
                guard += 1
                t = a.next_at
                r = a.rate(t)
                if r <= 0:  # idle now: look again a second later
                    a.next_at = t + 1.0
                    continue
                a.attempts += 1
                if self.sim.connect(a.ip, PORTS[a.service]):
                    a.accepted += 1
                    with self._open_lock:
                        heapq.heappush(self._open, (self.t0 + t + HOLD.get(a.script, 1.0), a.ip,
                                                    PORTS[a.service]))
                    out.extend(self._connection(a, self.t0 + t))
                else:
                    a.dropped += 1
                a.next_at = t + self.rng.expovariate(r)
        out.sort()
        self.lines_out += len(out)
        return out


    def conns(self, ports: Iterable[int]) -> dict[int, PortConns]:
        """The simulated socket table: connections accepted and not yet ended, per port."""
        now = self.clock()
        with self._open_lock:
            while self._open and self._open[0][0] <= now:
                heapq.heappop(self._open)
            pairs = [(port, ip) for _, ip, port in self._open]
        return summarize(pairs, ports)


class DemoSource(Source):
    """The live demo as a log source."""

    name = "demo"

    def __init__(self, scenario: Scenario, tick: float = 0.1) -> None:
        self.scenario = scenario
        self.tick = tick
        self._n = 0

    async def batches(self) -> AsyncIterator[list[RawLine]]:
        while True:
            lines = self.scenario.until(self.scenario.clock())
            if lines:
                start = self._n
                self._n += len(lines)
                yield [RawLine(t, "demo", start + i + 1) for i, t in enumerate(lines)]
            await asyncio.sleep(self.tick)

    def health(self) -> SourceHealth:
        return SourceHealth("demo", "replay", "real dovecot/sshd lines, simulated attack", self._n)
