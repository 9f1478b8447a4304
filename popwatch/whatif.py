"""What-if: replay recent events under a proposed policy or port limit, before applying it.

:class:`EventWindow` is the bounded history the Monitor keeps (15 minutes to 24 hours, and at
most ``max_events`` compact tuples). :func:`what_if_policy` runs a fresh
:class:`~popwatch.autoban.AutoBan` with the proposed ``maxretry``/``findtime`` over it and says
which addresses would have been banned, when and after how many attempts, and how many of them
also logged in successfully. :func:`what_if_limit` pushes the same attempts through a token
bucket per watched port (global, or per source) and says whose attempts would have been dropped.

The limit replay is an approximation: the log knows login *attempts*, not TCP connections
(dovecot carries up to ~13 attempts per connection), so it counts one connection per event.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from .autoban import AutoBan, fmt_duration
from .config import PolicyConfig, parse_duration
from .firewall.sim import TokenBucket
from .model import FAILURE_KINDS, AuthEvent, Kind, PortLimit, Rate, parse_burst

_FAILS = frozenset(str(k) for k in FAILURE_KINDS)
_SUCCESS = str(Kind.SUCCESS)
#: the port a service's attempts arrive on, for the limit replay
SERVICE_PORTS = {"pop3": (110, 995), "imap": (143, 993), "ssh": (22,), "smtp": (25,),
                 "submission": (587, 465), "sieve": (4190,)}


class EventWindow:
    """Recent failures and successes as small tuples, bounded in time and count."""

    def __init__(self, window: float = 3600.0, max_events: int = 200_000) -> None:
        self.window = window
        self.max_events = max_events
        # (ts, ip, service, kind, attempts, user)
        self.q: deque[tuple[float, str, str, str, int, str | None]] = deque(maxlen=max_events)

    def add(self, events: Iterable[AuthEvent]) -> None:
        q = self.q
        newest = 0.0
        for ev in events:
            if ev.ip is None:
                continue
            k = ev.kind
            if (k in _FAILS and ev.attempts > 0) or k == _SUCCESS:
                q.append((ev.ts, ev.ip, ev.service, k, ev.attempts, ev.user))
                if ev.ts > newest:
                    newest = ev.ts
        if newest:
            cutoff = newest - self.window
            while q and q[0][0] < cutoff:
                q.popleft()

    def __len__(self) -> int:
        return len(self.q)

    def events(self, since: float | None = None) -> Iterator[AuthEvent]:
        for ts, ip, svc, kind, n, user in sorted(self.q, key=lambda t: t[0]):
            if since is None or ts >= since:
                yield AuthEvent(ts, svc, kind, ip, user, n)


@dataclass(frozen=True, slots=True)
class WouldBan:
    ip: str
    at: float           # when the ban would have happened (the crossing event's time)
    attempts: int       # attempts counted in the window at the crossing
    total: int          # all failed attempts of this address in the replay
    logged_in: bool     # the address also logged in successfully
    rule: str
    bantime: float


@dataclass
class WhatIfReport:
    """The outcome of a replay, for the UI (``w``) and ``scan --what-if``."""

    proposal: str
    events: int
    span: tuple[float, float] | None
    banned: list[WouldBan] = field(default_factory=list)
    ips: int = 0                       # addresses with failures in the replay
    success_ips: int = 0               # addresses that logged in successfully
    success_hit: list[str] = field(default_factory=list)  # ... and would have been banned/dropped
    dropped: dict[str, int] = field(default_factory=dict)  # limit replay: ip -> attempts dropped
    note: str = ""

    def lines(self, limit: int = 20) -> list[str]:
        """Plain text, one line per finding (the CLI prints these; the UI shows them)."""
        out = [f"what-if {self.proposal}: {self.events} events"
               + (f" over {fmt_duration(round(self.span[1] - self.span[0]))}" if self.span else "")]
        if self.dropped:
            out.append(f"{len(self.dropped)} of {self.ips} addresses would have had attempts dropped "
                       f"({sum(self.dropped.values())} attempts)")
            for ip, n in sorted(self.dropped.items(), key=lambda kv: -kv[1])[:limit]:
                out.append(f"  {ip:<39} {n} dropped")
        else:
            out.append(f"{len(self.banned)} of {self.ips} addresses would have been banned")
            out.extend(f"  {b.ip:<39} after {b.attempts} attempts ({b.total} in all)"
                       + (f" [{b.rule}]" if b.rule != "maxretry" else "")
                       + ("  LOGGED IN SUCCESSFULLY" if b.logged_in else "")
                       for b in sorted(self.banned, key=lambda b: b.at)[:limit])
            if len(self.banned) > limit:
                out.append(f"  ... and {len(self.banned) - limit} more")
        out.append(f"{len(self.success_hit)} of {self.success_ips} addresses that logged in successfully "
                   f"would have been hit" + (f": {', '.join(self.success_hit[:10])}" if self.success_hit else ""))
        if self.note:
            out.append(self.note)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"proposal": self.proposal, "events": self.events, "ips": self.ips,
                "banned": [{"ip": b.ip, "at": b.at, "attempts": b.attempts, "total": b.total,
                            "logged_in": b.logged_in, "rule": b.rule, "bantime": b.bantime}
                           for b in self.banned],
                "dropped": self.dropped, "success_ips": self.success_ips,
                "success_hit": self.success_hit, "note": self.note}


_KEYS = {"maxretry", "findtime", "bantime", "user_ips", "user_maxretry", "success_maxretry",
         "port", "mode", "rate", "burst", "campaign"}


def parse_proposal(text: str) -> dict[str, Any]:
    """``maxretry=5,findtime=10m`` or ``port=110,mode=global,rate=1/second,burst=5`` -> dict.
    Raises ValueError naming the bad key or value."""
    out: dict[str, Any] = {}
    for part in (p.strip() for p in re.split(r"[,\s]+", text or "") if p.strip()):
        k, sep, v = part.partition("=")
        k = k.strip().replace("-", "_")
        if not sep or k not in _KEYS:
            raise ValueError(f"bad what-if item {part!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(sorted(_KEYS))}")
        v = v.strip()
        if k in ("maxretry", "user_ips", "user_maxretry", "success_maxretry", "port"):
            try:
                n = int(v)
            except ValueError:
                raise ValueError(f"bad what-if {k} {v!r}: expected a whole number") from None
            if n < (0 if k == "user_ips" else 1) or (k == "port" and n > 65535):
                raise ValueError(f"bad what-if {k} {v!r}: out of range")
            out[k] = n
        elif k in ("findtime", "bantime"):
            out[k] = parse_duration(v, k)
        elif k == "rate":
            out[k] = Rate.parse(v)
        elif k == "burst":
            out[k] = parse_burst(v)
        elif k == "campaign":
            if v not in ("on", "off"):
                raise ValueError(f"bad what-if campaign {v!r}: expected on or off")
            out[k] = v == "on"
        else:
            if v not in ("global", "per-source"):
                raise ValueError(f"bad what-if mode {v!r}: expected global or per-source")
            out[k] = v
    if not out:
        raise ValueError("empty what-if: give e.g. maxretry=5,findtime=10m")
    if ("port" in out or "rate" in out or "mode" in out) and "port" not in out:
        raise ValueError("a what-if limit needs port=N (with rate=, burst=, mode=)")
    return out


def _successes(events: list[AuthEvent], known: dict[str, float] | None) -> set[str]:
    s = {e.ip for e in events if e.kind == _SUCCESS and e.ip}
    if known:
        s.update(known)
    return s


def what_if_policy(events: Iterable[AuthEvent], policy: PolicyConfig, *, maxretry: int | None = None,
                   findtime: float | None = None, bantime: float | None = None,
                   protected: Any = None, successes: dict[str, float] | None = None,
                   campaign: Any = None, **extra: Any) -> WhatIfReport:
    """Replay ``events`` (any order) through a fresh auto-ban with the proposed values, and
    through the campaign response (:mod:`popwatch.campaigns`) when ``campaign`` (a
    CampaignConfig) is given and on (its auto_ban, or the proposal's ``campaign=on``)."""
    from .campaigns import CampaignTracker, nets_of
    evs = sorted(events, key=lambda e: e.ts)
    kw: dict[str, Any] = {k: v for k, v in (("maxretry", maxretry), ("findtime", findtime),
                                            ("bantime", bantime)) if v is not None}
    kw.update({k: v for k, v in extra.items() if k in ("user_ips", "user_maxretry", "success_maxretry")})
    pol = replace(policy, services=dict(policy.services), **kw)
    banned_until: dict[str, float] = {}
    eng = AutoBan(pol, protected=protected or (lambda ip: None), enabled=True,
                  is_banned=lambda ip: banned_until.get(ip, 0.0) > now[0], mono=lambda: 0.0)
    if successes:
        for ip, t in successes.items():
            eng.note_success(ip, t)
    now = [0.0]
    on = extra.get("campaign_on")
    use_camp = campaign is not None and bool(getattr(campaign, "auto_ban", False) if on is None else on)
    camp = None
    if use_camp:
        camp = CampaignTracker(campaign, protected=protected or (lambda ip: None), enabled=True,
                               is_banned=lambda k: banned_until.get(k, 0.0) > now[0], mono=lambda: 0.0)
    totals: dict[str, int] = {}
    first: dict[str, WouldBan] = {}
    blocked = 0
    for ev in evs:
        now[0] = ev.ts
        if ev.ip is None:
            continue
        if ev.kind in _FAILS and ev.attempts > 0:
            totals[ev.ip] = totals.get(ev.ip, 0) + ev.attempts
            keys = (ev.ip, *nets_of(ev.ip)) if camp is not None else (ev.ip,)
            if any(banned_until.get(k, 0.0) > ev.ts for k in keys):
                blocked += ev.attempts
                continue  # already banned: the attempt would not have reached the daemon
        ds = eng.feed([ev])
        if camp is not None:
            ds += camp.feed([ev])
        for d in ds:
            banned_until[d.ip] = ev.ts + d.bantime
            if d.ip not in first:
                first[d.ip] = WouldBan(d.ip, ev.ts, int(d.detail.get("count", totals.get(d.ip, 0))), 0, False,
                                       str(d.detail["rule"]), d.bantime)
    succ = _successes(evs, successes)
    banned = [replace(b, total=_total(b.ip, totals), logged_in=b.ip in succ) for b in first.values()]
    parts = [f"maxretry={pol.maxretry}", f"findtime={fmt_duration(pol.findtime)}"]
    if camp is not None:
        parts.append("campaign=on")
    if bantime is not None:
        parts.append(f"bantime={fmt_duration(pol.bantime)}")
    span = (evs[0].ts, evs[-1].ts) if evs else None
    r = WhatIfReport(",".join(parts), len(evs), span, banned, len(totals), len(succ),
                     sorted(b.ip for b in banned if b.logged_in))
    if camp is not None:
        n = sum(1 for b in banned if b.rule.startswith("campaign"))
        r.note = (f"campaign response: {n} bans, {blocked} failed attempts would not have reached the "
                  f"daemon; campaigns: " + ("; ".join(c.score for c in camp.rows(k=5)) or "none"))
    return r


def _total(target: str, totals: dict[str, int]) -> int:
    if "/" not in target:
        return totals.get(target, 0)
    import ipaddress

    net = ipaddress.ip_network(target, strict=False)
    return sum(n for ip, n in totals.items() if (":" in ip) == (net.version == 6)
               and ipaddress.ip_address(ip) in net)


def what_if_limit(events: Iterable[AuthEvent], limit: PortLimit, *, ipv6_prefix: int = 64) -> WhatIfReport:
    """Replay the attempts on ``limit.port`` through its token bucket(s): who would be dropped."""
    import ipaddress

    evs = sorted((e for e in events if e.ip and limit.port in SERVICE_PORTS.get(e.service, ())),
                 key=lambda e: e.ts)
    glob: TokenBucket | None = None
    per: dict[str, TokenBucket] = {}
    dropped: dict[str, int] = {}
    ips: set[str] = set()
    hit: set[str] = set()
    succ: set[str] = set()
    rate, burst = limit.rate.per_second, limit.burst
    for e in evs:
        ip = e.ip
        assert ip is not None
        if e.kind == _SUCCESS:
            succ.add(ip)
        else:
            ips.add(ip)
        if limit.mode == "count":
            continue
        n = e.attempts if e.kind != _SUCCESS else 1
        if limit.mode == "global":
            b = glob = glob or TokenBucket(burst, e.ts)
        else:
            key = ip if ":" not in ip else str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
            b = per.get(key) or per.setdefault(key, TokenBucket(burst, e.ts))
        for _ in range(max(1, n)):
            if not b.take(rate, burst, e.ts):
                dropped[ip] = dropped.get(ip, 0) + 1
                if e.kind == _SUCCESS:
                    hit.add(ip)
    span = (evs[0].ts, evs[-1].ts) if evs else None
    hit |= {ip for ip in succ if ip in dropped}
    return WhatIfReport(f"port {limit.port} {limit.describe()}", len(evs), span, [], len(ips), len(succ),
                        sorted(hit), dropped,
                        note="approximation: one connection per attempt (the log has attempts, not SYNs)")


def what_if(events: Iterable[AuthEvent], policy: PolicyConfig, proposal: str | dict[str, Any], *,
            protected: Any = None, successes: dict[str, float] | None = None,
            current_limit: PortLimit | None = None, ipv6_prefix: int = 64, campaign: Any = None) -> WhatIfReport:
    """Dispatch a textual or parsed proposal to the policy or the limit replay."""
    prop = parse_proposal(proposal) if isinstance(proposal, str) else dict(proposal)
    if "port" in prop:
        base = current_limit if current_limit is not None and current_limit.port == prop["port"] \
            else PortLimit(prop["port"], "global")
        mode = prop.get("mode", base.mode if base.mode != "count" else "global")
        lim = PortLimit(prop["port"], mode, prop.get("rate", base.rate), prop.get("burst", base.burst))
        return what_if_limit(events, lim, ipv6_prefix=ipv6_prefix)
    if "campaign" in prop:
        prop["campaign_on"] = prop.pop("campaign")
        if campaign is None:
            from .campaigns import CampaignConfig
            campaign = CampaignConfig()
    return what_if_policy(events, policy, protected=protected, successes=successes, campaign=campaign, **prop)


class ScanWhatIf:
    """``popwatch scan --what-if PROPOSAL FILE...``: collect the files' failures and successes
    (bounded: at most ``max_events``), then replay them under the proposal."""

    def __init__(self, proposal: dict[str, Any], max_events: int = 2_000_000) -> None:
        self.proposal = proposal
        self.max_events = max_events
        self.events: list[AuthEvent] = []
        self.dropped = 0

    def add(self, ev: AuthEvent) -> None:
        if ev.ip is None or not ((ev.kind in _FAILS and ev.attempts > 0) or ev.kind == _SUCCESS):
            return
        if len(self.events) >= self.max_events:
            self.dropped += 1
            return
        self.events.append(ev)

    def report(self, policy: PolicyConfig, allow: Iterable[str] = (), campaign: Any = None) -> WhatIfReport:
        from .policy import Protector

        prot = Protector(allow=list(allow))
        r = what_if(self.events, policy, self.proposal, protected=prot.protected_ip,
                    ipv6_prefix=policy.ipv6_prefix, campaign=campaign)
        if self.dropped:
            r.note = (r.note + "; " if r.note else "") + \
                f"only the first {self.max_events} events were replayed ({self.dropped} more not)"
        return r


def proposal_arg(text: str) -> dict[str, Any]:
    """argparse ``type=`` for ``--what-if``: a bad proposal is a usage error (exit 2)."""
    import argparse

    try:
        return parse_proposal(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
