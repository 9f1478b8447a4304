"""The state directory: active bans and an append-only audit log.

Writes are atomic (temp file + fsync + rename + fsync of the directory). A corrupt or truncated
bans file is reported, set aside as ``bans.json.corrupt-<time>`` and never crashes start-up.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .model import Ban, iso
from .policy import ssh_clients


def who() -> dict[str, Any]:
    """Who acted: the human behind sudo, and the SSH client of the session."""
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or os.environ.get("LOGNAME") or "?"
    return {"user": user, "ssh_client": sorted(ssh_clients())}


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Persist:
    """One state directory. ``problems`` collects what was wrong on load (for the header)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.bans_path = self.dir / "bans.json"
        self.audit_path = self.dir / "audit.jsonl"
        self.problems: list[str] = []
        self._who = who()

    def load_bans(self) -> list[Ban]:
        try:
            raw = self.bans_path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            data = json.loads(raw)
            return [Ban(ip=str(d["ip"]), created=float(d["created"]),
                        expires=None if d.get("expires") is None else float(d["expires"]),
                        reason=str(d.get("reason", "")), origin=str(d.get("origin", "cli")))
                    for d in data["bans"]]
        except (ValueError, KeyError, TypeError) as e:
            aside = self.bans_path.with_name(f"bans.json.corrupt-{int(time.time())}")
            os.replace(self.bans_path, aside)
            self.problems.append(f"{self.bans_path} was corrupt ({e.__class__.__name__}); set aside as {aside.name}")
            return []

    def save_bans(self, bans: list[Ban]) -> None:
        data = {"version": 1, "bans": [
            {"ip": b.ip, "created": b.created, "expires": b.expires, "reason": b.reason, "origin": b.origin}
            for b in bans]}
        atomic_write(self.bans_path, json.dumps(data, indent=1).encode())

    def audit(self, action: str, target: str, *, origin: str, reason: str = "",
              change: list[str] | None = None, ok: bool = True, error: str = "") -> None:
        rec = {"time": iso(time.time()), "who": self._who, "origin": origin, "action": action,
               "target": target, "reason": reason, "change": change or [], "ok": ok}
        if error:
            rec["error"] = error
        line = (json.dumps(rec, ensure_ascii=True) + "\n").encode()
        fd = os.open(self.audit_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
