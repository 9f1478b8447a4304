"""The state directory: active bans, ban history, login history, an append-only audit log,
and the single-instance lock.

Files (all 0600 in a 0700 directory):

* ``bans.json``       active bans with expiry (atomic rewrite on every change)
* ``history.jsonl``   one line per ban ever made (recidive; trimmed to ``history_max`` lines)
* ``successes.json``  last successful login per address (the auto-ban's success grace; bounded)
* ``logins.json``     successful logins per user, per address (campaigns' known-good; bounded)
* ``audit.jsonl``     append-only: time, who (user, SSH client), origin, action, target, reason,
                      the exact firewall change, and what undo needs
* ``popwatch.lock``   flock held by the running ``popwatch watch`` (its pid inside)

Writes are atomic (temp file + fsync + rename + fsync of the directory). A corrupt or truncated
state file is reported, set aside as ``<name>.corrupt-<time>`` and never crashes start-up;
unreadable lines of the JSON-lines files are skipped and counted.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterator

from .model import Ban, iso
from .policy import ssh_clients


def who() -> dict[str, Any]:
    """Who acted: the human behind sudo, and the SSH client of the session."""
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or os.environ.get("LOGNAME")
    if not user:
        try:
            import pwd
            user = pwd.getpwuid(os.getuid()).pw_name
        except (KeyError, ImportError):
            user = f"uid {os.getuid()}"
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


class AlreadyRunning(RuntimeError):
    """Another popwatch holds the state directory's lock; the message says which."""


class Persist:
    """One state directory. ``problems`` collects what was wrong on load (for the header)."""

    def __init__(self, state_dir: Path, *, history_max: int = 10000) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.bans_path = self.dir / "bans.json"
        self.audit_path = self.dir / "audit.jsonl"
        self.history_path = self.dir / "history.jsonl"
        self.successes_path = self.dir / "successes.json"
        self.logins_path = self.dir / "logins.json"
        self.lock_path = self.dir / "popwatch.lock"
        self.history_max = history_max
        self.problems: list[str] = []
        self._who = who()
        self._lock_fd: int | None = None
        self._history_lines: int | None = None

    # ------------------------------------------------------------------ lock
    def lock(self) -> None:
        """Take the single-instance lock, or raise :class:`AlreadyRunning`."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            except OSError:
                pid = "?"
            os.close(fd)
            raise AlreadyRunning(f"another popwatch (pid {pid}) is already running with state directory "
                                 f"{self.dir}; stop it first, or use --state-dir for a separate "
                                 f"instance") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock; the file stays
            self._lock_fd = None

    def _set_aside(self, path: Path, e: Exception) -> None:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}-{secrets.token_hex(2)}")
        try:
            os.replace(path, aside)
            where = f"set aside as {aside.name}"
        except OSError as err:
            where = f"could not be set aside ({err.strerror})"
        self.problems.append(f"{path} was corrupt ({e.__class__.__name__}: {str(e)[:80]}); {where}")

    def load_bans(self) -> list[Ban]:
        try:
            raw = self.bans_path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            self.problems.append(f"{self.bans_path}: {e.strerror}")
            return []
        try:
            data = json.loads(raw)
            bans = [Ban(ip=str(d["ip"]), created=float(d["created"]),
                        expires=None if d.get("expires") is None else float(d["expires"]),
                        reason=str(d.get("reason", "")), origin=str(d.get("origin", "cli")))
                    for d in data["bans"]]
            from .addr import parse_target
            for b in bans:
                parse_target(b.ip, allow_net=True)  # a tampered file never reaches the firewall
            return bans
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self._set_aside(self.bans_path, e)
            return []

    def save_bans(self, bans: list[Ban]) -> None:
        data = {"version": 1, "bans": [
            {"ip": b.ip, "created": b.created, "expires": b.expires, "reason": b.reason, "origin": b.origin}
            for b in bans]}
        atomic_write(self.bans_path, json.dumps(data, indent=1).encode())

    def audit(self, action: str, target: str, *, origin: str, reason: str = "",
              change: list[str] | None = None, ok: bool = True, error: str = "",
              **extra: Any) -> dict[str, Any]:
        """Append one record; returns it (with its ``id``, which ``undo`` refers to)."""
        rec: dict[str, Any] = {"id": f"{time.time_ns():x}-{secrets.token_hex(2)}", "time": iso(time.time()),
                               "who": self._who, "origin": origin, "action": action, "target": target,
                               "reason": reason, "change": change or [], "ok": ok}
        if error:
            rec["error"] = error
        rec.update(extra)
        _append(self.audit_path, rec)
        return rec

    def read_audit(self) -> list[dict[str, Any]]:
        """Every readable audit record, oldest first (bad lines skipped)."""
        return list(self._jsonl(self.audit_path))

    def _jsonl(self, path: Path) -> Iterator[dict[str, Any]]:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            self.problems.append(f"{path}: {e.strerror}")
            return
        bad = 0
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(rec, dict):
                yield rec
            else:
                bad += 1
        if bad:
            note = f"{path}: {bad} unreadable line(s) skipped"
            if note not in self.problems:
                self.problems.append(note)

    # ------------------------------------------------------------------ ban history
    def add_history(self, ban: Ban) -> None:
        _append(self.history_path, {"ip": ban.ip, "created": ban.created, "expires": ban.expires,
                                    "reason": ban.reason, "origin": ban.origin})
        if self._history_lines is not None:
            self._history_lines += 1
            if self._history_lines > 2 * self.history_max:
                self.load_history()  # trims

    def load_history(self) -> list[dict[str, Any]]:
        """Past bans, oldest first; the file is trimmed to the newest ``history_max``."""
        recs = [r for r in self._jsonl(self.history_path) if isinstance(r.get("ip"), str)
                and isinstance(r.get("created"), (int, float))]
        if len(recs) > self.history_max:
            recs = recs[-self.history_max:]
            atomic_write(self.history_path,
                         "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in recs).encode())
        self._history_lines = len(recs)
        return recs

    # ------------------------------------------------------------------ login history
    def load_successes(self) -> dict[str, float]:
        try:
            raw = self.successes_path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            self.problems.append(f"{self.successes_path}: {e.strerror}")
            return {}
        try:
            data = json.loads(raw)
            return {str(ip): float(t) for ip, t in data["successes"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self._set_aside(self.successes_path, e)
            return {}

    def save_successes(self, successes: dict[str, float]) -> None:
        atomic_write(self.successes_path, json.dumps({"version": 1, "successes": successes}).encode())

    def load_logins(self) -> Any:
        """``logins.json`` as parsed JSON (None when absent; a corrupt file is set aside)."""
        try:
            raw = self.logins_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            self.problems.append(f"{self.logins_path}: {e.strerror}")
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            self._set_aside(self.logins_path, e)
            return None

    def save_logins(self, data: Any) -> None:
        atomic_write(self.logins_path, json.dumps(data).encode())


def _append(path: Path, rec: dict[str, Any]) -> None:
    line = (json.dumps(rec, ensure_ascii=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
