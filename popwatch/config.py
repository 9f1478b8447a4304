"""Configuration: dataclasses, TOML loading and validation. No Textual, no I/O beyond reading.

Every key is optional. Unknown keys and bad values raise :class:`ConfigError` whose message
names the key, the value and what is allowed; the CLI prints it as one line and exits 2.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import MODES, PortLimit, Rate, parse_burst

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
    #: ``[crowdsec]`` (popwatch.crowdsec.CrowdSecConfig), None when absent
    crowdsec: Any = None
    #: ``[campaign]`` (popwatch.campaigns.CampaignConfig)
    campaign: Any = field(default_factory=lambda: _campaign_default())

    def limit_for(self, port: int) -> PortLimit:
        return self.limits.get(port) or PortLimit(port)

    def port_limits(self) -> list[PortLimit]:
        return [self.limit_for(p) for p in self.ports]


_TOP_KEYS = {"ports", "logs", "journal", "backend", "state_dir", "policy", "limits"}
#: tables validated by their own modules ([crowdsec]: popwatch/crowdsec.py)
_TABLE_KEYS = {"crowdsec", "campaign"}


def _campaign_default() -> Any:
    from .campaigns import CampaignConfig

    return CampaignConfig()
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
            raise ValueError(f"bad {name} {_shown(v)}: expected from {_fmt_dur(lo)} to "
                             f"{_fmt_dur(hi or 0)}{limit}")
        return secs
    return f


def _fmt_dur(secs: float) -> str:
    """Seconds -> the shortest exact ``N[s|m|h|d|w]`` form (for messages and --print-default)."""
    for unit, n in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n and secs % n == 0:
            return f"{int(secs // n)}{unit}"
    return f"{int(secs)}s" if float(secs).is_integer() else f"{secs:g}s"


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
        from .crowdsec import from_table

        cfg.crowdsec = from_table(data["crowdsec"])
    if "campaign" in data:
        from .campaigns import from_table as campaign_table

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
