"""Issue #18 point 2: ring events of a dovecot session labelled `mail` (auth_verbose lines that
come before the login process's summary) take the protocol once the summary names it."""

from __future__ import annotations

from pathlib import Path

from popwatch.model import AuthEvent
from popwatch.parse import Parser
from popwatch.store import StateStore
from tests.helpers import Clock

SAMPLE = Path(__file__).resolve().parents[2] / "popwatch/data/samples/dovecot-syslog-variants/mail.log.auth_verbose"


def _events() -> list[AuthEvent]:
    return list(Parser().parse_many(SAMPLE.read_text().splitlines(), source=str(SAMPLE)))


def test_real_auth_verbose_lines_relabelled_after_summary():
    evs = _events()
    # the sample has `mail` lines before their summaries (else this test proves nothing)
    early = [e for e in evs if e.service == "mail"]
    assert len(early) >= 3 and all(e.session for e in early)
    summary_svc = {e.session: e.service for e in evs if e.service not in ("mail",) and e.session}
    store = StateStore(clock=Clock())
    for e in evs:  # one at a time, as the monitor's batches may split anywhere
        store.add_events([e])
    store.snapshot()  # relabelling is applied when the ring is read
    ring = list(store.events)
    assert not [e for e in ring if e.service == "mail"]
    for e in early:
        got = [r for r in ring if r.session == e.session and r.ts == e.ts and r.line == e.line]
        assert got and all(r.service == summary_svc[e.session] for r in got)
    # pop3 and imap sessions each keep their own protocol
    assert {e.service for e in ring if e.session == "8Ym1k09hAuHLAHEL"} == {"imap"}
    assert {e.service for e in ring if e.session == "+Fgzk09hFJjLAHEL"} == {"pop3"}
    # the detail view and the live log read the relabelled events; nothing else changed
    assert not [e for e in store.events_of("203.0.113.11") if e.service == "mail"]
    assert not [e for e in store.snapshot().events if e.service == "mail"]
    assert [(e.ts, e.kind, e.attempts, e.line) for e in ring] == \
        [(e.ts, e.kind, e.attempts, e.line) for e in evs if e.kind in ("auth_failed", "invalid_user", "success")]
    assert not store._mail_sess and not store._mail_done


def test_pending_relabels_bounded_without_reads_and_applied_when_read():
    # 100k sessions, each one `mail` attempt then its summary, and nobody reads the ring
    # (headless): what waits to be applied stays within the ring's size
    ring = 300
    store = StateStore(clock=Clock(), ring=ring)
    batch: list[AuthEvent] = []
    for i in range(100_000):
        s, ip = f"s{i}", f"198.51.100.{i % 200}"
        batch.append(AuthEvent(ts=1.8e9 + i, service="mail", kind="auth_failed", ip=ip, user="u", session=s))
        batch.append(AuthEvent(ts=1.8e9 + i + .5, service="pop3" if i % 2 else "imap", kind="auth_failed",
                               ip=ip, user="u", attempts=0, session=s))
        if len(batch) == 200:
            store.add_events(batch)
            batch = []
            assert store._mail_done_n <= 4 * ring + 200 and len(store._mail_done) <= 4 * ring + 200
            assert len(store._mail_sess) <= ring and len(store._mail_q) <= ring
    store.snapshot()
    assert not [e for e in store.events if e.service == "mail"]
    assert {e.service for e in store.events} == {"pop3", "imap"}


def test_unsummarised_session_stays_mail_and_other_sessions_untouched():
    evs = _events()
    store = StateStore(clock=Clock())
    # drop the imap summary: that session's attempt stays `mail`, the pop3 ones are relabelled
    store.add_events([e for e in evs if not (e.session == "8Ym1k09hAuHLAHEL" and e.service == "imap")])
    left = [e for e in store.events_of("203.0.113.11") if e.service == "mail"]
    assert [e.session for e in left] == ["8Ym1k09hAuHLAHEL"]
    # an event without a session never relabels anything
    store.add_events([AuthEvent(ts=1.0, service="pop3", kind="auth_failed", ip="203.0.113.11")])
    assert [e.session for e in store.events_of("203.0.113.11") if e.service == "mail"] == ["8Ym1k09hAuHLAHEL"]


def test_memory_bounded_under_100k_sessions_without_summary():
    ring = 500
    store = StateStore(clock=Clock(), ring=ring)
    n = 100_000
    batch = []
    for i in range(n):
        batch.append(AuthEvent(ts=1.8e9 + i, service="mail", kind="invalid_user",
                               ip=f"203.0.113.{i % 200}", user="root", session=f"s{i}"))
        if len(batch) == 1000:
            store.add_events(batch)
            batch = []
            assert len(store._mail_sess) <= ring and len(store._mail_q) <= ring
    assert len(store._mail_sess) <= ring and len(store._mail_q) <= ring
    assert sum(len(v) for v in store._mail_sess.values()) <= ring
    # the newest sessions are still tracked and get relabelled
    last = f"s{n - 1}"
    ip = f"203.0.113.{(n - 1) % 200}"
    store.add_events([AuthEvent(ts=1.9e9, service="imap", kind="auth_failed", ip=ip,
                                attempts=0, session=last)])
    assert [e.service for e in store.events_of(ip) if e.session == last] == ["imap", "imap"]
    assert [e.session for e in store.events_of(ip) if e.service == "imap"] == [last, last]
    # a long session whose early events left the ring: only the ones still in it change
    store2 = StateStore(clock=Clock(), ring=10)
    store2.add_events([AuthEvent(ts=float(i), service="mail", kind="invalid_user", ip="203.0.113.5",
                                 session="long") for i in range(25)])
    assert len(store2._mail_sess["long"]) <= 10
    store2.add_events([AuthEvent(ts=99.0, service="pop3", kind="auth_failed", ip="203.0.113.5",
                                 attempts=0, session="long")])
    assert [e.service for e in store2.events_of("203.0.113.5")] == ["pop3"] * 10
    assert [e.ts for e in store2.events] == [float(i) for i in range(16, 25)] + [99.0]
