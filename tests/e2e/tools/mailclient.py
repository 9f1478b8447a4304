"""Mail clients for the e2e lab, run inside a client namespace (``python -m tests.e2e.tools.mailclient``).

Two modes, both bounded in attempts and seconds, both refusing any target outside the
documentation ranges, both writing one JSON object per attempt to ``--out`` as they go (so a
client stopped by the lab still leaves its record):

``legit``   a user checking mail: every ``--interval`` seconds one POP3 (or IMAP) login with the
            right password, STAT/SELECT, logout. ``{"t": start, "ok": bool, "secs": latency,
            "retrans": segments the kernel retransmitted (a dropped SYN), "err": str|None,
            "proto": "pop3"}``.
``attack``  a plain poplib/imaplib dictionary attacker, one guess per connection (the way the
            2009 attack and many scripts do it): for each password, for each user, connect,
            USER/PASS (or LOGIN), disconnect. ``{"t": ..., "user": u, "result":
            "fail"|"found"|"connect"|"error", "err": ...}``; "connect" means the connection
            itself failed (dropped by a firewall: timeout); the same guess is then retried.
"""

from __future__ import annotations

import argparse
import imaplib
import ipaddress
import json
import poplib
import socket
import sys
import threading
import time

DOC_NETS = tuple(ipaddress.ip_network(n) for n in
                 ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))


def _check_target(host: str) -> None:
    ip = ipaddress.ip_address(host)
    if not any(ip in n for n in DOC_NETS):
        raise SystemExit(f"{host} is not a documentation address: refusing")


class _Out:
    def __init__(self, path: str) -> None:
        self.f = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self.lock = threading.Lock()

    def write(self, rec: dict) -> None:
        with self.lock:
            self.f.write(json.dumps(rec) + "\n")


def retransmits(sock: socket.socket) -> int:
    """The kernel's count of segments this connection retransmitted (``tcpi_total_retrans`` of
    TCP_INFO), SYNs included: a SYN a firewall dropped shows here, however loaded the host."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int.from_bytes(info[100:104], sys.byteorder) if len(info) >= 104 else 0


def try_login(proto: str, host: str, user: str, password: str, timeout: float,
              info: dict | None = None) -> tuple[str, str | None]:
    """One connection, one login. -> (result, error): ok | fail | connect | error. ``info``
    (if given) gets ``retrans``: how many segments the kernel retransmitted on it."""
    port = 110 if proto == "pop3" else 143
    try:
        if proto == "pop3":
            c = poplib.POP3(host, port, timeout=timeout)
        else:
            c = imaplib.IMAP4(host, port, timeout=timeout)
    except (OSError, EOFError) as e:
        return "connect", f"{type(e).__name__}: {e}"
    if info is not None:
        info["retrans"] = retransmits(c.sock)  # type: ignore[union-attr]
    try:
        if proto == "pop3":
            c.user(user)
            c.pass_(password)
            c.stat()
            c.quit()
        else:
            c.login(user, password)
            c.select("INBOX")
            c.logout()
        return "ok", None
    except (poplib.error_proto, imaplib.IMAP4.error) as e:
        try:
            if proto == "pop3":
                c.quit()
            else:
                c.logout()
        except Exception:  # noqa: BLE001 - best effort
            pass
        return "fail", str(e)[:200]
    except (OSError, EOFError) as e:
        return "error", f"{type(e).__name__}: {e}"
    finally:
        try:
            c.sock.close()  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001
            pass


def legit(a: argparse.Namespace, out: _Out) -> None:
    t_end = time.monotonic() + a.seconds
    protos = a.proto.split(",")
    i = 0
    while time.monotonic() < t_end and i < a.max_attempts:
        proto = protos[i % len(protos)]
        i += 1
        t0 = time.monotonic()
        info: dict = {}
        res, err = try_login(proto, a.host, a.user, a.password, a.timeout, info)
        out.write({"t": time.time(), "ok": res == "ok", "secs": round(time.monotonic() - t0, 3),
                   "retrans": info.get("retrans"), "err": err, "proto": proto, "result": res})
        time.sleep(max(0.0, a.interval - (time.monotonic() - t0)))


def attack(a: argparse.Namespace, out: _Out) -> None:
    users = [u for u in open(a.users, encoding="utf-8").read().split() if u]
    pwds = [p for p in open(a.passwords, encoding="utf-8").read().split() if p]
    t_end = time.monotonic() + a.seconds
    pairs = [(u, p) for p in pwds for u in users][: a.max_attempts]
    lock = threading.Lock()
    found: set[str] = set()
    it = iter(pairs)

    tries = [0]

    def worker() -> None:
        nxt = None
        while time.monotonic() < t_end:
            with lock:
                if tries[0] >= a.max_connects:
                    return
                tries[0] += 1
                if nxt is None:
                    nxt = next(it, None)
            if nxt is None:
                return
            user, pw = nxt
            if user in found:
                nxt = None
                continue
            t = time.time()
            res, err = try_login(a.proto, a.host, user, pw, a.timeout)
            if res == "ok":
                found.add(user)
                res = "found"
            out.write({"t": t, "user": user, "result": res, "err": err, "proto": a.proto})
            if res == "connect":
                time.sleep(0.2)  # the connection was refused or dropped: retry the same guess
            else:
                nxt = None

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.parallel)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(max(0.0, t_end - time.monotonic()) + a.timeout + 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("legit", "attack"))
    ap.add_argument("--host", required=True)
    ap.add_argument("--proto", default="pop3")
    ap.add_argument("--user", default="alice")
    ap.add_argument("--password", default="")
    ap.add_argument("--users")
    ap.add_argument("--passwords")
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-attempts", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--max-connects", type=int, default=2000, help="attack: connection attempts in all")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    _check_target(a.host)
    if a.seconds > 900 or a.max_attempts > 5000 or a.max_connects > 10000 or not 1 <= a.parallel <= 16:
        raise SystemExit("bounded: at most 900 s, 5000 attempts, 16 in parallel")
    socket.setdefaulttimeout(a.timeout)
    out = _Out(a.out)
    (legit if a.mode == "legit" else attack)(a, out)
    print("done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
