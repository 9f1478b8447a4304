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
* ``state.lock``      flock held for a moment around every read-modify-write of ``bans.json``
                      (every process, watch and CLI: one writer at a time, changes merged)

Writes are atomic (temp file + fsync + rename + fsync of the directory; a failed write leaves
no temp file). The audit log is written ahead: an action's record is durable (fsync, batched
for auto-bans) before the kernel changes; a change that then fails gets a ``void`` record
naming it. Any OSError writing the state dir is raised as :class:`StateDirError` (one line,
CLI exit 7). A corrupt or truncated
state file is reported, set aside as ``<name>.corrupt-<time>`` and never crashes start-up;
unreadable lines of the JSON-lines files are skipped and counted.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .faults import point
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


class StateDirError(OSError):
    """The state directory cannot be written (read-only, full, no permission): one line."""

    def __str__(self) -> str:
        return str(self.strerror or super().__str__())


def state_error(where: Path, e: OSError, what: str) -> StateDirError:
    why = e.strerror or str(e)
    return StateDirError(e.errno, f"state dir {where}: cannot {what}: {why}")


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        point("temp written")
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)  # never leave an empty or partial temp file behind
        except OSError:
            pass
        raise
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
        self.state_lock_path = self.dir / "state.lock"
        self._drop_dead_temps()

    def _drop_dead_temps(self) -> None:
        """Temp files of writers that were killed mid-write (their pid is gone)."""
        try:
            temps = list(self.dir.glob(".*.*.tmp"))
        except OSError:
            return
        for t in temps:
            try:
                pid = int(t.name.rsplit(".", 2)[-2])
                os.kill(pid, 0)
            except ProcessLookupError:
                try:
                    t.unlink()
                except OSError:
                    pass
            except (ValueError, OSError):
                pass

    # ------------------------------------------------------------------ one writer at a time
    @contextmanager
    def state_lock(self, wait: float = 30.0) -> Iterator[None]:
        """Hold the state dir's writer lock (flock on ``state.lock``) for one read-modify-write."""
        try:
            fd = os.open(self.state_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise state_error(self.dir, e, "take the state lock") from None
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StateDirError(0, f"state dir {self.dir}: another popwatch held the "
                                               f"state lock for {wait:.0f}s") from None
                    time.sleep(0.002)
            for stale in self.dir.glob(".bans.json.*.tmp"):  # a writer killed mid-write (we hold the lock)
                try:
                    stale.unlink()
                except OSError:
                    pass
            yield
        finally:
            os.close(fd)

    def merge_bans(self, upsert: dict[str, Ban], remove: set[str]) -> list[Ban]:
        """Apply this process's changes to ``bans.json`` as it is now on disk (another process
        may have changed it since we read it), under the state lock. Returns the merged list."""
        with self.state_lock():
            current = {b.ip: b for b in self.load_bans()}
            for ip in remove:
                current.pop(ip, None)
            current.update(upsert)
            bans = list(current.values())
            self._write_bans(bans)
        return bans

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

    def publish_exempt(self, exempt: list[str]) -> None:
        """A running watch's protected sources (its SSH client...), for the CLI calls made
        meanwhile: they set the kernel's exemption set to their own protected set plus this."""
        try:
            atomic_write(self.dir / WATCH_EXEMPT, json.dumps({"pid": os.getpid(), "exempt": exempt}).encode())
        except OSError as e:
            self.problems.append(str(state_error(self.dir, e, f"write {WATCH_EXEMPT}")))

    def unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                (self.dir / WATCH_EXEMPT).unlink()
            except OSError:
                pass
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
            for b in bans:  # a tampered file never reaches the firewall
                if not _plain_address(b.ip):
                    parse_target(b.ip, allow_net=True)
            return bans
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self._set_aside(self.bans_path, e)
            return []

    def save_bans(self, bans: list[Ban]) -> None:
        """Replace ``bans.json`` with exactly ``bans`` (under the state lock)."""
        with self.state_lock():
            self._write_bans(bans)

    def _write_bans(self, bans: list[Ban]) -> None:
        data = {"version": 1, "bans": [
            {"ip": b.ip, "created": b.created, "expires": b.expires, "reason": b.reason, "origin": b.origin}
            for b in bans]}
        point("bans.json")
        try:
            atomic_write(self.bans_path, json.dumps(data, indent=1).encode())
        except OSError as e:
            raise state_error(self.dir, e, "write bans.json") from None
        point("bans.json written")

    def record(self, action: str, target: str, *, origin: str, reason: str = "",
               change: list[str] | None = None, ok: bool = True, error: str = "",
               **extra: Any) -> dict[str, Any]:
        """One audit record, not yet written (see :meth:`write_audit`)."""
        rec: dict[str, Any] = {"id": f"{time.time_ns():x}-{secrets.token_hex(2)}", "time": iso(time.time()),
                               "who": self._who, "origin": origin, "action": action, "target": target,
                               "reason": reason, "change": change or [], "ok": ok}
        if error:
            rec["error"] = error
        rec.update(extra)
        return rec

    def audit(self, action: str, target: str, *, origin: str, reason: str = "",
              change: list[str] | None = None, ok: bool = True, error: str = "",
              **extra: Any) -> dict[str, Any]:
        """Append one record (durable when this returns); returns it (with its ``id``, which
        ``undo`` refers to). Raises :class:`StateDirError`."""
        rec = self.record(action, target, origin=origin, reason=reason, change=change, ok=ok,
                          error=error, **extra)
        self.write_audit([rec])
        return rec

    def write_audit(self, recs: list[dict[str, Any]]) -> None:
        """Append records with one write and one fsync (write-ahead for a batch of auto-bans)."""
        if recs:
            point("audit")
            try:
                _append_many(self.audit_path, recs)
            except OSError as e:
                raise state_error(self.dir, e, "write the audit log") from None

    def void(self, rec: dict[str, Any], error: str) -> bool:
        """Mark a written-ahead record as not done (its change failed or was rolled back).
        Returns False when even that could not be written."""
        try:
            self.write_audit([self.record("void", str(rec.get("target", "")), origin=str(rec.get("origin", "")),
                                          reason=error, ok=True, voids=rec.get("id"))])
            return True
        except OSError:
            return False

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
        self.add_history_many([ban])

    def add_history_many(self, bans: list[Ban]) -> None:
        """Append bans to the history with one write and one fsync."""
        if not bans:
            return
        try:
            _append_many(self.history_path, [{"ip": b.ip, "created": b.created, "expires": b.expires,
                                              "reason": b.reason, "origin": b.origin} for b in bans])
        except OSError as e:
            raise state_error(self.dir, e, "write history.jsonl") from None
        if self._history_lines is not None:
            self._history_lines += len(bans)
            if self._history_lines > 2 * self.history_max:
                self.load_history()  # trims

    def load_history(self) -> list[dict[str, Any]]:
        """Past bans, oldest first; the file is trimmed to the newest ``history_max``."""
        recs = [r for r in self._jsonl(self.history_path) if isinstance(r.get("ip"), str)
                and isinstance(r.get("created"), (int, float))]
        if len(recs) > self.history_max:
            recs = recs[-self.history_max:]
            try:
                atomic_write(self.history_path,
                             "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in recs).encode())
            except OSError as e:
                self.problems.append(str(state_error(self.dir, e, "trim history.jsonl")))
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
        try:
            atomic_write(self.successes_path, json.dumps({"version": 1, "successes": successes}).encode())
        except OSError as e:
            raise state_error(self.dir, e, "write successes.json") from None

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
        try:
            atomic_write(self.logins_path, json.dumps(data).encode())
        except OSError as e:
            raise state_error(self.dir, e, "write logins.json") from None


def _plain_address(text: str) -> bool:
    """A strict numeric address (``inet_pton`` accepts nothing else: no hostnames, no octal)."""
    import socket

    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        return True
    except (OSError, ValueError, TypeError):
        return False


WATCH_EXEMPT = "watch-exempt.json"


def watch_exempt(state_dir: Path) -> list[str]:
    """What a running watch protects ([] when no watch holds the state dir's lock)."""
    d = Path(state_dir)
    try:
        fd = os.open(d / "popwatch.lock", os.O_RDONLY)
    except OSError:
        return []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return []  # nobody holds it: a watch is not running (the file is stale)
        except BlockingIOError:
            pass
        data = json.loads((d / WATCH_EXEMPT).read_bytes())
        return [str(x) for x in data.get("exempt", [])][:10000]
    except (OSError, ValueError, AttributeError, TypeError):
        return []
    finally:
        os.close(fd)


def _append_many(path: Path, recs: list[dict[str, Any]]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in recs).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, size)  # no half record (a full disk mid-line)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
