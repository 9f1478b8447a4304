"""Configuration: dataclasses, TOML loading and validation. No Textual, no I/O beyond reading.

Every key is optional. Unknown keys and bad values raise :class:`ConfigError` whose message
names the key, the value and what is allowed; the CLI prints it as one line and exits 2.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import MODES, PortLimit, Rate, fmt_duration, parse_burst

DEFAULT_CONFIG = Path("/etc/popwatch/popwatch.toml")
DEFAULT_STATE_DIR = Path("/var/lib/popwatch")
DEFAULT_PORTS = (110, 143, 22)
BACKENDS = ("auto", "legacy", "nft", "nftables", "sim", "none")


#: the kernel's ban sets hold timeouts up to 2147483 s (ipset; about 24.8 days)
MAX_BANTIME = 2147483
#: a findtime longer than a year only keeps memory busy
MAX_FINDTIME = 365 * 86400


class ConfigError(ValueError):
    """A bad configuration value; the message is one line for the admin."""


_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.ASCII)
_DUR_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object, what: str = "duration") -> float:
    """``90``, ``30s``, ``10m``, ``1h``, ``2d``, ``1w`` -> seconds. Raises ValueError."""
    shown = _shown(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        secs = float(value)
    else:
        m = _DUR_RE.match(str(value).lower())
        if not m:
            raise ValueError(f"bad {what} {shown}: expected seconds or N[s|m|h|d|w] with ASCII digits, "
                             f"e.g. 10m")
        secs = float(m.group(1)) * _DUR_UNITS[m.group(2)]
    if not math.isfinite(secs):
        raise ValueError(f"bad {what} {shown}: too large")
    if secs <= 0:
        raise ValueError(f"bad {what} {shown}: must be positive")
    return secs


def _shown(value: object, cap: int = 40) -> str:
    """A value echoed in an error message: repr, cut at ``cap`` characters."""
    r = repr(value)
    return r if len(r) <= cap else f"{r[:cap]}…[+{len(r) - cap}]"


def parse_ports(value: object) -> list[int]:
    """``"110,143,22"`` or ``[110, 143]`` -> [110, 143, 22]. Raises ValueError."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"bad ports {value!r}: expected a list like 110,143,22")
    ports: list[int] = []
    for item in items:
        try:
            if not str(item).strip().isascii():
                raise ValueError
            p = int(str(item).strip())
        except ValueError:
            raise ValueError(f"bad port {item!r}: expected a number 1-65535") from None
        if not 1 <= p <= 65535:
            raise ValueError(f"bad port {item!r}: expected a number 1-65535")
        if p not in ports:
            ports.append(p)
    if not ports:
        raise ValueError("no ports given")
    return ports


#: services a ``[policy.services.NAME]`` table may name (model.Service values)
SERVICES = ("pop3", "imap", "ssh", "smtp", "submission", "sieve", "lmtp", "other")
BAN_ACTIONS = ("drop", "reject")
WHATIF_MIN, WHATIF_MAX = 900.0, 86400.0


@dataclass
class ServicePolicy:
    """Per-service override of the auto-ban thresholds; None = inherit from [policy]."""

    maxretry: int | None = None
    findtime: float | None = None
    bantime: float | None = None


@dataclass
class PolicyConfig:
    auto_ban: bool = False
    maxretry: int = 5
    findtime: float = 600.0
    bantime: float = 3600.0
    allow: list[str] = field(default_factory=list)
    ipv6_prefix: int = 64
    ban_action: str = "drop"
    #: repeat offenders: bantime * factor ** (earlier bans within recidive_window), at most recidive_max
    recidive_factor: float = 2.0
    recidive_max: float = 7 * 86400.0
    recidive_window: float = 86400.0
    #: an IP that logged in successfully within success_grace is auto-banned only after
    #: success_maxretry failures within findtime (a stale password on a phone is not an attack)
    success_grace: float = 30 * 86400.0
    success_maxretry: int = 50
    #: per-username signal: a user name tried from user_ips or more addresses within findtime
    #: marks it as targeted; an address trying it is then banned after user_maxretry failures
    user_ips: int = 10
    user_maxretry: int = 2
    #: how much recent history the what-if replay keeps in memory (15m-24h)
    whatif_window: float = 3600.0
    #: ban history entries kept in the state directory (recidive, audit of past bans)
    history_max: int = 10000
    #: `Failed publickey` counts toward maxretry (off: it is a probe, what an agent holding
    #: several keys writes before `Accepted publickey`)
    count_publickey: bool = False
    services: dict[str, ServicePolicy] = field(default_factory=dict)

    def for_service(self, service: str) -> tuple[int, float, float]:
        """(maxretry, findtime, bantime) that apply to ``service``."""
        o = self.services.get(service)
        if o is None:
            return self.maxretry, self.findtime, self.bantime
        return (o.maxretry if o.maxretry is not None else self.maxretry,
                o.findtime if o.findtime is not None else self.findtime,
                o.bantime if o.bantime is not None else self.bantime)


@dataclass
class Config:
    ports: list[int] = field(default_factory=lambda: list(DEFAULT_PORTS))
    logs: list[str] = field(default_factory=list)
    journal: bool | None = None  # None: use journald when no log file is found
    backend: str = "auto"
    state_dir: Path = DEFAULT_STATE_DIR
    limits: dict[int, PortLimit] = field(default_factory=dict)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    source_path: Path | None = None
    #: ``[crowdsec]``, None when absent
    crowdsec: CrowdSecConfig | None = None
    #: ``[campaign]``
    campaign: CampaignConfig = field(default_factory=lambda: CampaignConfig())

    def limit_for(self, port: int) -> PortLimit:
        return self.limits.get(port) or PortLimit(port)

    def port_limits(self) -> list[PortLimit]:
        return [self.limit_for(p) for p in self.ports]


_TOP_KEYS = {"ports", "logs", "journal", "backend", "state_dir", "policy", "limits"}
#: tables with their own validators below (crowdsec_table, campaign_table)
_TABLE_KEYS = {"crowdsec", "campaign"}


_POLICY_KEYS = {"auto_ban", "maxretry", "findtime", "bantime", "allow", "ipv6_prefix", "ban_action",
                "recidive_factor", "recidive_max", "recidive_window", "success_grace",
                "success_maxretry", "user_ips", "user_maxretry", "whatif_window", "history_max",
                "count_publickey", "services"}
_SERVICE_KEYS = {"maxretry", "findtime", "bantime"}
_LIMIT_KEYS = {"mode", "rate", "burst"}


def _check_keys(d: dict[str, Any], allowed: set[str], where: str) -> None:
    for k in d:
        if k not in allowed:
            raise ConfigError(f"unknown key {where}{k!r} (allowed: {', '.join(sorted(allowed))})")


def _val(where: str, fn, value: object) -> Any:
    try:
        return fn(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _int_range(lo: int, hi: int):
    def f(v: object) -> int:
        if isinstance(v, str) and re.fullmatch(r"\s*\d+\s*", v, re.ASCII):
            v = int(v)  # "5" is 5 for every numeric key, as for the durations and burst
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"expected a whole number {lo}-{hi}, got {v!r}")
        return v
    return f


def _float_range(lo: float, hi: float):
    def f(v: object) -> float:
        if isinstance(v, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", v, re.ASCII):
            v = float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise ValueError(f"expected a number from {lo:g} to {hi:g}, got {v!r}")
        return float(v)
    return f


def _dur(name: str, lo: float = 0.0, hi: float | None = None):
    def f(v: object) -> float:
        secs = parse_duration(v, name)
        if secs < lo or (hi is not None and secs > hi):
            limit = " (the kernel ban set's limit)" if hi == MAX_BANTIME else ""
            raise ValueError(f"bad {name} {_shown(v)}: expected from {fmt_duration(lo, exact=True)} to "
                             f"{fmt_duration(hi or 0, exact=True)}{limit}")
        return secs
    return f


def _cidr(v: object) -> str:
    try:
        return str(ipaddress.ip_network(str(v), strict=False))
    except ValueError:
        raise ValueError(f"{v!r} is not an address or CIDR") from None


def from_dict(data: dict[str, Any], source: Path | None = None) -> Config:
    """Build and validate a Config from parsed TOML."""
    _check_keys(data, _TOP_KEYS | _TABLE_KEYS, "")
    cfg = Config(source_path=source)
    if "ports" in data:
        cfg.ports = _val("ports", parse_ports, data["ports"])
    if "logs" in data:
        logs = data["logs"]
        if not isinstance(logs, list) or not all(isinstance(x, str) for x in logs):
            raise ConfigError(f"logs: expected a list of paths, got {logs!r}")
        cfg.logs = list(logs)
    if "journal" in data:
        cfg.journal = _val("journal", _bool, data["journal"])
    if "backend" in data:
        if data["backend"] not in BACKENDS:
            raise ConfigError(f"backend: {data['backend']!r} is not one of {', '.join(BACKENDS)}")
        cfg.backend = data["backend"]
    if "state_dir" in data:
        sd = data["state_dir"]
        if not isinstance(sd, str) or not sd.strip() or not sd.startswith("/") or "\0" in sd:
            raise ConfigError(f"state_dir: expected an absolute directory path, got {_shown(sd)}")
        cfg.state_dir = Path(sd)
    pol = data.get("policy", {})
    if not isinstance(pol, dict):
        raise ConfigError("policy: expected a table [policy]")
    _check_keys(pol, _POLICY_KEYS, "policy.")
    p = cfg.policy
    if "auto_ban" in pol:
        p.auto_ban = _val("policy.auto_ban", _bool, pol["auto_ban"])
    if "count_publickey" in pol:
        p.count_publickey = _val("policy.count_publickey", _bool, pol["count_publickey"])
    if "maxretry" in pol:
        p.maxretry = _val("policy.maxretry", _int_range(1, 100000), pol["maxretry"])
    if "findtime" in pol:
        p.findtime = _val("policy.findtime", _dur("findtime", 1, MAX_FINDTIME), pol["findtime"])
    if "bantime" in pol:
        p.bantime = _val("policy.bantime", _dur("bantime", 1, MAX_BANTIME), pol["bantime"])
    if "allow" in pol:
        if not isinstance(pol["allow"], list):
            raise ConfigError(f"policy.allow: expected a list of CIDRs, got {pol['allow']!r}")
        p.allow = [_val("policy.allow", _cidr, a) for a in pol["allow"]]
    if "ipv6_prefix" in pol:
        p.ipv6_prefix = _val("policy.ipv6_prefix", _int_range(16, 128), pol["ipv6_prefix"])
    if "ban_action" in pol:
        if pol["ban_action"] not in BAN_ACTIONS:
            raise ConfigError(f"policy.ban_action: {pol['ban_action']!r} is not one of {', '.join(BAN_ACTIONS)}")
        p.ban_action = pol["ban_action"]
    if "recidive_factor" in pol:
        p.recidive_factor = _val("policy.recidive_factor", _float_range(1, 100), pol["recidive_factor"])
    for key, lo, hi in (("recidive_max", 1, MAX_BANTIME), ("recidive_window", 60, 365 * 86400),
                        ("success_grace", 0, 3650 * 86400), ("whatif_window", WHATIF_MIN, WHATIF_MAX)):
        if key in pol:
            if key == "success_grace" and pol[key] in (0, "0"):
                p.success_grace = 0.0  # 0 turns the grace off
                continue
            setattr(p, key, _val(f"policy.{key}", _dur(key, lo, hi), pol[key]))
    for key, lo, hi in (("success_maxretry", 1, 1_000_000), ("user_maxretry", 1, 100000),
                        ("history_max", 100, 10_000_000)):
        if key in pol:
            setattr(p, key, _val(f"policy.{key}", _int_range(lo, hi), pol[key]))
    if "user_ips" in pol:  # 0 turns the per-username signal off
        p.user_ips = _val("policy.user_ips", _int_range(0, 100000), pol["user_ips"])
        if p.user_ips == 1:
            raise ConfigError("policy.user_ips: 1 is not allowed: expected 0 (off) or 2-100000")
    svcs = pol.get("services", {})
    if not isinstance(svcs, dict):
        raise ConfigError(f"policy.services: expected tables like [policy.services.ssh], got {svcs!r}")
    for name, spec in svcs.items():
        where = f"policy.services.{name}"
        if name not in SERVICES:
            raise ConfigError(f"unknown service {where!r} (allowed: {', '.join(SERVICES)})")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a table with maxretry, findtime, bantime")
        _check_keys(spec, _SERVICE_KEYS, where + ".")
        o = ServicePolicy()
        if "maxretry" in spec:
            o.maxretry = _val(where + ".maxretry", _int_range(1, 100000), spec["maxretry"])
        if "findtime" in spec:
            o.findtime = _val(where + ".findtime", _dur("findtime", 1, MAX_FINDTIME), spec["findtime"])
        if "bantime" in spec:
            o.bantime = _val(where + ".bantime", _dur("bantime", 1, MAX_BANTIME), spec["bantime"])
        p.services[name] = o
    limits = data.get("limits", {})
    if not isinstance(limits, dict):
        raise ConfigError("limits: expected tables like [limits.110]")
    for key, spec in limits.items():
        where = f"limits.{key}"
        port = _val(where, lambda v: parse_ports([v])[0], key)
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a table with mode, rate, burst")
        _check_keys(spec, _LIMIT_KEYS, where + ".")
        mode = spec.get("mode", "count")
        if mode not in MODES:
            raise ConfigError(f"{where}.mode: {mode!r} is not one of {', '.join(MODES)}")
        rate = _val(where + ".rate", Rate.parse, spec.get("rate", "1/second"))
        burst = _val(where + ".burst", parse_burst, spec.get("burst", 5))
        cfg.limits[port] = PortLimit(port, mode, rate, burst)
        if port not in cfg.ports:
            cfg.ports.append(port)
    if "crowdsec" in data:
        cfg.crowdsec = crowdsec_table(data["crowdsec"])
    if "campaign" in data:
        cfg.campaign = campaign_table(data["campaign"])
    return cfg


def load(path: Path | None, *, required: bool = False) -> Config:
    """Load the config file. A missing default file is fine; a missing explicit one is not."""
    p = path or DEFAULT_CONFIG
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {p} does not exist") from None
        return Config()
    except OSError as e:
        raise ConfigError(f"config file {p}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p}: not valid TOML: {e}") from None
    try:
        return from_dict(data, p)
    except ConfigError as e:
        raise ConfigError(f"config file {p}: {e}") from None


# ----------------------------------------------------------------------------- [crowdsec]

CROWDSEC_KEYS = {"url", "machine_id", "password", "password_file", "register", "bouncer_key", "bouncer_key_file",
         "pull_interval", "timeout", "apply", "apply_origins", "push_unbans"}
#: decision origins ``apply`` bans locally by default: this LAPI's agents and admins (and other
#: popwatch hosts), not the Central API's community lists (tens of thousands: the bouncer's job)
CROWDSEC_APPLY_ORIGINS = ("crowdsec", "cscli")



#: the ``[crowdsec]`` part of ``popwatch config --print-default`` (commented TOML; the example
#: lines must load when uncommented)
CROWDSEC_DOC = """\
# CrowdSec bridge (optional): share bans with a fleet through a CrowdSec Local API (LAPI).
# Push: with machine_id and password, every ban made here (key, auto, CLI) is sent as an alert
# with one ban decision (scenario popwatch/<origin>), so every host's bouncer enforces it; a
# person's unban here deletes it again (push_unbans). Create the machine on the LAPI host with
# `cscli machines add NAME --password PW`, or let popwatch register itself (register) and then
# run `cscli machines validate NAME`.
# Pull: with a bouncer key (`cscli bouncers add NAME`), the LAPI's ban decisions show on the
# rows as "banned fleet-wide (origin)", checked against this host's kernel set. With apply,
# popwatch also bans the fleet's single addresses in its own set, for decisions whose origin
# is in apply_origins (not the Central API's community lists: those are the bouncer's job).
# Secrets can live in files instead (first line): password_file, bouncer_key_file.
# The LAPI being down, slow or refusing never blocks a local ban: bans wait in a queue and are
# retried with backoff; the header shows the sources "crowdsec push" and "crowdsec pull".
# [crowdsec]
# url = "http://127.0.0.1:8080/"
# machine_id = "mail1-popwatch"
# password = "change-me"
# register = false
# bouncer_key = "0123456789abcdef"
# pull_interval = "10s"
# timeout = "5s"
# apply = false
# apply_origins = ["crowdsec", "cscli"]
# push_unbans = true
"""

@dataclass
class CrowdSecConfig:
    """``[crowdsec]``: push needs machine_id + password, pull needs bouncer_key."""

    url: str = "http://127.0.0.1:8080/"
    machine_id: str | None = None
    password: str | None = None
    register: bool = False
    bouncer_key: str | None = None
    pull_interval: float = 10.0
    timeout: float = 5.0
    apply: bool = False
    push_unbans: bool = True
    apply_origins: tuple[str, ...] = CROWDSEC_APPLY_ORIGINS

    @property
    def push(self) -> bool:
        return bool(self.machine_id and self.password)

    @property
    def pull(self) -> bool:
        return bool(self.bouncer_key)


def _secret(d: dict[str, Any], key: str, where: str) -> str | None:
    """``key`` or ``key_file`` (first line of the file)."""
    if key in d and f"{key}_file" in d:
        raise ConfigError(f"{where}{key}: give {key} or {key}_file, not both")
    if key in d:
        v = d[key]
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{where}{key}: expected a non-empty string")
        return v.strip()
    if f"{key}_file" in d:
        p = Path(str(d[f"{key}_file"]))
        try:
            lines = p.read_text(encoding="utf-8").strip().splitlines()
        except OSError as e:
            raise ConfigError(f"{where}{key}_file: {p}: {e.strerror}") from None
        v = lines[0].strip() if lines else ""
        if not v:
            raise ConfigError(f"{where}{key}_file: {p} is empty")
        return v
    return None


def crowdsec_table(d: object, where: str = "crowdsec.") -> CrowdSecConfig:
    """Validate a ``[crowdsec]`` table. Raises ConfigError naming the key."""
    if not isinstance(d, dict):
        raise ConfigError("crowdsec: expected a table [crowdsec]")
    for k in d:
        if k not in CROWDSEC_KEYS:
            raise ConfigError(f"unknown key {where}{k!r} (allowed: {', '.join(sorted(CROWDSEC_KEYS))})")
    c = CrowdSecConfig()
    if "url" in d:
        u = urllib.parse.urlsplit(str(d["url"]))
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError(f"{where}url: {d['url']!r} is not an http(s):// URL of the Local API")
        c.url = str(d["url"])
    if not c.url.endswith("/"):
        c.url += "/"
    if "machine_id" in d:
        m = d["machine_id"]
        if not isinstance(m, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", m):
            raise ConfigError(f"{where}machine_id: {m!r}: expected 1-64 letters, digits, . _ -")
        c.machine_id = m
    c.password = _secret(d, "password", where)
    c.bouncer_key = _secret(d, "bouncer_key", where)
    if bool(c.machine_id) != bool(c.password):
        raise ConfigError(f"{where}machine_id and password go together (push needs both)")
    for key in ("register", "apply", "push_unbans"):
        if key in d:
            if not isinstance(d[key], bool):
                raise ConfigError(f"{where}{key}: expected true or false, got {d[key]!r}")
            setattr(c, key, d[key])
    if "apply_origins" in d:
        o = d["apply_origins"]
        if not isinstance(o, list) or not all(isinstance(x, str) and x for x in o):
            raise ConfigError(f"{where}apply_origins: expected a list of decision origins like "
                              f"[\"crowdsec\", \"cscli\", \"CAPI\", \"lists\"]")
        c.apply_origins = tuple(o)
    for key, lo, hi in (("pull_interval", 1.0, 3600.0), ("timeout", 0.1, 120.0)):
        if key in d:
            try:
                v = parse_duration(d[key], key)
            except ValueError as e:
                raise ConfigError(f"{where}{key}: {e}") from None
            if not lo <= v <= hi:
                raise ConfigError(f"{where}{key}: {d[key]!r}: expected from {lo:g}s to {hi:g}s")
            setattr(c, key, v)
    if not c.push and not c.pull:
        raise ConfigError(f"{where[:-1]}: nothing to do: set machine_id + password (push) and/or "
                          f"bouncer_key (pull)")
    if c.apply and not c.pull:
        raise ConfigError(f"{where}apply needs bouncer_key (decisions are pulled to be applied)")
    return c


# ----------------------------------------------------------------------------- [campaign]

CAMPAIGN_DOC = """\
# Campaigns: distributed attacks (one mailbox tried from many addresses, each guessing once or
# twice) and low-and-slow ones (one address guessing every few minutes), which no per-address
# threshold sees. Detection is always on (the campaigns panel, `c`); auto_ban responds:
# * a user name tried from user_sources or more addresses within window is under a campaign;
#   from then on, every address failing on it that never logged in successfully as that user
#   is banned at once (for bantime);
# * net_sources of a campaign's addresses in one /24 (IPv6: /64) ban that network, and
#   wide_sources in one /16 (IPv6: /48) spread over wide_nets of its /24s (/64s) ban the /16
#   (/48) (for net_bantime; 0 turns either off) -- never a network holding a protected address
#   or one that ever logged in;
# * an address with slow_maxretry failed attempts within slow_window (0 = off), averaging at
#   most slow_rate a minute since it was first seen (faster ones are [policy]'s business),
#   is banned.
# Addresses that ever logged in successfully (logins.json in the state directory) are never
# banned by a campaign, only by their own [policy] threshold.
[campaign]
auto_ban = false
window = "15m"
user_sources = 10
net_sources = 4
wide_sources = 32
wide_nets = 4
slow_window = "1d"
slow_maxretry = 30
slow_rate = 3
bantime = "1d"
net_bantime = "1d"
"""

CAMPAIGN_KEYS = {"auto_ban", "window", "user_sources", "net_sources", "wide_sources", "wide_nets",
         "slow_window", "slow_maxretry", "slow_rate", "bantime", "net_bantime"}


@dataclass
class CampaignConfig:
    auto_ban: bool = False
    window: float = 900.0
    user_sources: int = 10
    net_sources: int = 4
    wide_sources: int = 32
    wide_nets: int = 4
    slow_window: float = 86400.0
    slow_maxretry: int = 30
    slow_rate: float = 3.0
    bantime: float = 86400.0
    net_bantime: float = 86400.0


def campaign_table(t: Any) -> CampaignConfig:
    """Validate ``[campaign]``. Raises ConfigError naming the key."""
    if not isinstance(t, dict):
        raise ConfigError("campaign: expected a table [campaign]")
    _check_keys(t, CAMPAIGN_KEYS, "campaign.")
    c = CampaignConfig()
    if "auto_ban" in t:
        c.auto_ban = _val("campaign.auto_ban", _bool, t["auto_ban"])
    for k, lo, hi in (("window", 60, 7 * 86400), ("slow_window", 60, 30 * 86400),
                      ("bantime", 1, 365 * 86400), ("net_bantime", 1, 365 * 86400)):
        if k in t:
            setattr(c, k, _val(f"campaign.{k}", _dur(k, lo, hi), t[k]))
    for k, lo, hi in (("user_sources", 2, 100000), ("net_sources", 0, 65536), ("wide_sources", 0, 1 << 20),
                      ("wide_nets", 1, 65536), ("slow_maxretry", 0, 1_000_000)):
        if k in t:
            setattr(c, k, _val(f"campaign.{k}", _int_range(lo, hi), t[k]))
    if "slow_rate" in t:
        c.slow_rate = _val("campaign.slow_rate", _float_range(0.01, 10000), t["slow_rate"])
    if c.net_sources == 1:
        raise ConfigError("campaign.net_sources: 1 is not allowed: expected 0 (off) or 2-65536")
    return c
