"""The JSON event stream (``watch --events``) as a stable schema for log pipelines: every event
from the real samples has exactly the documented fields and types, and ``watch --events FILE``
appends one object per line."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

from popwatch.firewall.sim import SimFirewall
from popwatch.model import Kind, RawLine, Service
from popwatch.monitor import Monitor
from popwatch.parse import Parser
from popwatch.store import StateStore

SAMPLES = resources.files("popwatch") / "data" / "samples"
ROOT = Path(__file__).resolve().parents[2]

REQUIRED = {"ts": str, "service": str, "kind": str, "ip": (str, type(None)), "user": (str, type(None)),
            "attempts": int, "source": str, "lineno": (int, type(None)), "line": str}
OPTIONAL = {"host": str, "session": str}


def check(ev: dict) -> None:
    assert REQUIRED.keys() <= ev.keys() <= REQUIRED.keys() | OPTIONAL.keys(), ev.keys()
    for k, t in {**REQUIRED, **OPTIONAL}.items():
        if k in ev:
            assert isinstance(ev[k], t), (k, ev[k])
    ts = dt.datetime.fromisoformat(ev["ts"])
    assert ts.utcoffset() == dt.timedelta(0)
    assert ev["service"] in {s.value for s in Service}
    assert ev["kind"] in {k.value for k in Kind}
    assert ev["attempts"] >= 0
    if ev["ip"] is not None:
        assert not ev["ip"].lower().startswith("::ffff:") and " " not in ev["ip"]
    assert "\n" not in ev["line"] and "\x1b" not in ev["line"]


def test_every_sample_event_has_the_documented_schema() -> None:
    out = io.StringIO()
    clock = lambda: 1_795_844_000.0  # noqa: E731
    mon = Monitor(store=StateStore(clock=clock), parser=Parser(now=clock), firewall=SimFirewall(clock=clock),
                  events_out=out)
    n_lines = 0
    for d in SAMPLES.iterdir():
        for f in d.iterdir():
            lines = f.read_text(errors="replace").splitlines()
            n_lines += len(lines)
            mon.ingest([RawLine(t, f.name, i + 1) for i, t in enumerate(lines)])
    # campaign records ("type": "campaign", popwatch.campaigns) are not auth events
    events = [e for l in out.getvalue().splitlines() if (e := json.loads(l)).get("type") != "campaign"]
    assert len(events) > 100 and n_lines > len(events) / 2
    for ev in events:
        check(ev)
    kinds = {e["kind"] for e in events}
    assert {"auth_failed", "invalid_user", "success"} <= kinds
    assert {e["service"] for e in events} >= {"pop3", "imap", "ssh"}
    assert any(":" in (e["ip"] or "") for e in events)  # IPv6 too
    assert all(isinstance(e["lineno"], int) for e in events)  # files: always a line number


def test_watch_events_file_gets_one_object_per_line(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    src = (SAMPLES / "debian12-rsyslog" / "mail.log").read_text().splitlines()[:40]
    log.write_text("\n".join(src) + "\n")
    out = tmp_path / "events.jsonl"
    out.write_text('{"ts": "already there"}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    r = subprocess.run([sys.executable, "-m", "popwatch", "watch", "--no-tui", "--backend", "sim", "--log", str(log),
                        "--from-start", "--duration", "2", "--state-dir", str(tmp_path / "state"),
                        "--events", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = out.read_text().splitlines()
    assert rows[0] == '{"ts": "already there"}'  # appended, not truncated
    events = [e for l in rows[1:] if (e := json.loads(l)).get("type") != "campaign"]
    assert events and all(e["source"] == str(log) for e in events)
    for e in events:
        check(e)
    assert [e["lineno"] for e in events] == sorted(e["lineno"] for e in events)
