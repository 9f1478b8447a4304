"""The CrowdSec Local API client: the few HTTP calls popwatch makes (standard library only,
synchronous: run them on a worker thread), and the LAPI's duration and scope forms."""

from __future__ import annotations

import contextlib
import datetime as _dt
import ipaddress
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .. import __version__

_GO_DUR = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Go's ``time.Duration`` string (``3h59m58.5s``, ``-16.7ms``, ``0s``) -> seconds. ValueError."""
    s = str(text).strip()
    sign = -1.0 if s.startswith("-") else 1.0
    if s[:1] in ("-", "+"):
        s = s[1:]
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _GO_DUR.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _GO_UNIT[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"bad duration {text!r}")
    return sign * total


def go_duration(secs: float) -> str:
    """Seconds -> a duration string the LAPI parses (whole seconds, at least 1s)."""
    return f"{max(1, round(secs))}s"


def lapi_time(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def scope_of(target: str) -> tuple[str, str]:
    """("Ip", addr) or ("Range", cidr) for a popwatch ban target (a /32 or /128 is an Ip)."""
    if "/" in target:
        net = ipaddress.ip_network(target, strict=False)
        if net.num_addresses == 1:
            return "Ip", str(net.network_address)
        return "Range", str(net)
    return "Ip", str(ipaddress.ip_address(target))


class LapiError(Exception):
    """A failed LAPI call. ``status`` is the HTTP status (None: no answer: down, slow, DNS)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def auth(self) -> bool:
        return self.status in (401, 403)


class Lapi:
    """The few LAPI calls popwatch makes (synchronous; run them on a worker thread)."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.timeout = timeout
        self.user_agent = f"popwatch/{__version__}"

    def _call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        h = {"User-Agent": self.user_agent, "Accept": "application/json", **(headers or {})}
        if data is not None:
            h["Content-Type"] = "application/json"
        req = urllib.request.Request(urllib.parse.urljoin(self.url, path), data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read(64 << 20)
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read(4096) or b"{}")
                msg = detail.get("message") or detail.get("error") or e.reason
            except (ValueError, AttributeError, OSError):
                msg = e.reason
            raise LapiError(f"{method} {path}: HTTP {e.code}: {msg}", e.code) from None
        except (TimeoutError, urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise LapiError(f"{method} {path}: {reason or e.__class__.__name__}") from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise LapiError(f"{method} {path}: the answer is not JSON") from None

    def register(self, machine_id: str, password: str) -> None:
        self._call("POST", "v1/watchers", {"machine_id": machine_id, "password": password})

    def login(self, machine_id: str, password: str, scenarios: list[str]) -> tuple[str, float]:
        """(JWT, expiry epoch seconds)."""
        r = self._call("POST", "v1/watchers/login",
                       {"machine_id": machine_id, "password": password, "scenarios": scenarios})
        if not isinstance(r, dict) or not r.get("token"):
            raise LapiError("login: no token in the answer")
        exp = time.time() + 3000.0
        with contextlib.suppress(ValueError, TypeError):
            exp = _dt.datetime.fromisoformat(str(r["expire"]).replace("Z", "+00:00")).timestamp()
        return str(r["token"]), exp

    def post_alerts(self, token: str, alerts: list[dict[str, Any]]) -> list[str]:
        r = self._call("POST", "v1/alerts", alerts, {"Authorization": f"Bearer {token}"})
        return [str(x) for x in r] if isinstance(r, list) else []

    def delete_decisions(self, token: str, scope: str, value: str) -> int:
        q = urllib.parse.urlencode({"ip" if scope == "Ip" else "range": value})
        r = self._call("DELETE", f"v1/decisions?{q}", None, {"Authorization": f"Bearer {token}"})
        try:
            return int((r or {}).get("nbDeleted", 0))
        except (TypeError, ValueError, AttributeError):
            return 0

    def stream(self, key: str, startup: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(new, deleted) decisions since the last call with this key (all active on startup)."""
        r = self._call("GET", f"v1/decisions/stream?startup={'true' if startup else 'false'}", None,
                       {"X-Api-Key": key})
        if not isinstance(r, dict):
            raise LapiError("decisions stream: unexpected answer")
        return [d for d in r.get("new") or [] if isinstance(d, dict)], \
            [d for d in r.get("deleted") or [] if isinstance(d, dict)]


