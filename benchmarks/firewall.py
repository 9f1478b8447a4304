"""Firewall benchmark: popwatch's ipset bans and rule changes vs one iptables rule per IP.

Run as root: ``python benchmarks/firewall.py [--backends nft,nftables,legacy] [--samples 200]``.
Everything happens in a network namespace this script creates and deletes (``pwfwbench-*``);
the host's tables are never touched. Addresses are documentation ranges only; no packets are
sent. Figures are medians and p99 of many samples on a shared, noisy machine.

Measured per backend (nft = iptables-nft binaries, legacy = python-iptables):
  * one ban (``Firewall.ban``: pyroute2-encoded netlink ipset add) with 0 / 1k / 10k bans
    present; in the same run, BEFORE: the old hand-written netlink client and the ``ipset``
    binary (benchmarks/ipset_before.py), and pyroute2's plain ``IPSet.add`` (why popwatch keeps
    a thin template layer for the hot path);
  * bulk load of 10k bans (``ban_many``: batched netlink adds) and, BEFORE, one ``ipset restore``
    of the same 10k (skipped when the binary is absent); reading them all back (``bans()``);
  * one counter poll (``Firewall.counters``, v4 + v6) with 10k bans present;
  * one retune (``set_limit``: atomic replace of one port's rules, counters carried);
  * baseline, same run: one ``iptables -w -A INPUT -s IP -j DROP`` per IP with 0 / 1k / 10k
    such rules present, 1k of them added one by one, and a poll with ``iptables-save -c``.
Targets (issue 5): ban <= 2 ms median at 10k, poll <= 3 ms at 10k, bulk 10k <= 0.5 s;
(issue 13, pyroute2): ban <= 0.2 ms median at 10k, bulk 10k <= 0.5 s.

``nftables`` (popwatch's own ``table inet popwatch``, issue 14) is measured the same way (ban
through libnftables, counters by one netlink dump, bulk as one transaction; its baseline is one
``nft add rule ... ip saddr IP drop`` per IP) and printed side by side with ``nft``.
Targets (issue 14): ban <= 0.2 ms at 10k, poll <= 1 ms at 10k, bulk 10k <= 0.3 s.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


_V4 = [str(a) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
       for a in ipaddress.ip_network(n)]


def v4(i: int) -> str:
    """The i-th IPv4 documentation address (768 of them, then they repeat)."""
    return _V4[i % len(_V4)]


def v6(i: int) -> str:
    """An address in the i-th /64 of 2001:db8::/32 (one ipset entry each)."""
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("2001:db8::")) + (i << 64) + 1))


def population(n: int, offset: int = 0) -> list[tuple[str, float]]:
    """``n`` distinct bans: all 768 IPv4 documentation addresses, the rest IPv6 /64s (only
    documentation space may be used, and it holds just 768 IPv4 addresses)."""
    k4 = min(n, len(_V4))
    return [(v4(i), 3600.0) for i in range(k4)] + [(v6(offset + i), 3600.0) for i in range(n - k4)]


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs) * 1e3, 3),
            "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3, 3), "n": len(xs)}


def timed(fn: Callable[[], Any], n: int) -> dict[str, float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return stats(out)


def run(argv: list[str], stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)


# ----------------------------------------------------------------------------- inside the netns

def inner_nftables(samples: int) -> dict[str, Any]:
    from popwatch.model import PortLimit, Rate
    from popwatch.firewall.nftables import NftablesFirewall

    lock = f"/tmp/pwfwbench-{os.getpid()}.lock"
    fw = NftablesFirewall(lock_path=lock, exempt=[])
    run(["nft", "-f", "-"], "table inet admin {\n chain in { type filter hook input priority filter; "
        "policy accept;\n  iif lo accept\n  tcp dport 25 accept\n }\n}\n")
    limits = [PortLimit(110, "per-source", Rate.parse("5/second"), 10),
              PortLimit(143, "global", Rate.parse("5/second"), 10), PortLimit(22)]
    fw.install(limits)
    res: dict[str, Any] = {"backend": "nftables", "ban_netlink": {}, "ban_ipset_binary": {}}
    counter = [10**6]

    def fresh() -> str:
        counter[0] += 1
        return v4(counter[0]) if counter[0] % 4 == 0 else v6(counter[0])

    def flush() -> None:
        for s in ("ban4", "ban6", "ban6n"):
            run(["nft", "flush", "set", "inet", "popwatch", s])
    for present in (0, 1000, 10000):
        flush()
        if present:
            fw.ban_many(population(present))
        res["ban_netlink"][present] = timed(lambda: fw.ban(fresh(), 3600), samples)
    flush()
    items = population(10000, offset=50_000)
    t0 = time.perf_counter()
    n = fw.ban_many(items)
    res["bulk_10k_s"] = round(time.perf_counter() - t0, 3)
    res["bulk_entries"] = len(fw.bans())
    assert n == 10000
    res["poll_at_10k"] = timed(fw.counters, samples)
    res["check_enforcement_at_10k"] = timed(fw.check_enforcement, samples)
    modes = ["per-source", "global"]
    k = [0]

    def retune() -> None:
        k[0] += 1
        fw.set_limit(PortLimit(110, modes[k[0] % 2], Rate.parse(f"{k[0] % 50 + 1}/second"), 10))
    res["retune"] = timed(retune, max(20, samples // 5))
    fw.uninstall()
    # baseline: one nft rule per banned IP, added with the nft binary
    base: dict[str, Any] = {"append_rule": {}}
    cnt = [2 * 10**6]
    run(["nft", "add", "table", "inet", "base"])
    run(["nft", "add", "chain", "inet", "base", "in", "{ type filter hook input priority -5; }"])

    def add_rule() -> None:
        cnt[0] += 1
        run(["nft", "add", "rule", "inet", "base", "in", "ip", "saddr", v4(cnt[0]), "drop"])
    for present in (0, 1000, 10000):
        run(["nft", "flush", "chain", "inet", "base", "in"])
        if present:
            run(["nft", "-f", "-"], "".join(f"add rule inet base in ip saddr {v4(i)} drop\n" for i in range(present)))
        base["append_rule"][present] = timed(add_rule, max(20, samples // 5))
    run(["nft", "flush", "chain", "inet", "base", "in"])
    t0 = time.perf_counter()
    for _ in range(1000):
        add_rule()
    base["append_1k_one_by_one_s"] = round(time.perf_counter() - t0, 3)
    base["poll_iptables_save_at_10k"] = timed(lambda: run(["nft", "list", "ruleset"]), 20)
    res["baseline"] = base
    fw.close()
    try:
        os.unlink(lock)
    except OSError:
        pass
    return res


def inner(backend: str, samples: int) -> dict[str, Any]:
    from popwatch.model import PortLimit, Rate

    if backend == "nftables":
        return inner_nftables(samples)

    lock = f"/tmp/pwfwbench-{os.getpid()}.lock"
    if backend == "nft":
        from popwatch.firewall.iptables import IptablesFirewall
        fw: Any = IptablesFirewall(flavour="nft", lock_path=lock)
        ipt, restore, save = "iptables-nft", "iptables-nft-restore", "iptables-nft-save"
    else:
        from popwatch.firewall.iptc_backend import IptcFirewall
        fw = IptcFirewall(lock_path=lock)
        ipt, restore, save = "iptables-legacy", "iptables-legacy-restore", "iptables-legacy-save"
    # ~ a realistic admin ruleset
    run([ipt, "-w", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT"])
    run([ipt, "-w", "-A", "INPUT", "-p", "tcp", "--dport", "25", "-j", "ACCEPT"])
    limits = [PortLimit(110, "per-source", Rate.parse("5/second"), 10),
              PortLimit(143, "global", Rate.parse("5/second"), 10), PortLimit(22)]
    fw.install(limits)
    res: dict[str, Any] = {"backend": backend}
    counter = [10**6]

    def fresh() -> str:
        # new /64s, plus every 4th an IPv4 address (re-adding refreshes its timeout: same work)
        counter[0] += 1
        return v4(counter[0]) if counter[0] % 4 == 0 else v6(counter[0])

    from pyroute2 import IPSet

    from benchmarks.ipset_before import Ipset as OldIpset
    from benchmarks.ipset_before import NetlinkIpset as OldNetlink
    from benchmarks.ipset_before import run_binary as old_run
    from popwatch.firewall import rules as R

    has_binary = shutil.which("ipset") is not None
    old_nl, pr2 = OldNetlink(), IPSet()
    old = OldIpset(old_run, old_run)

    def old_ban() -> None:  # what Firewall.ban did before: validate, then the old client's ADD
        e = R.ban_entry(fresh(), allow_net=False, ipv6_prefix=64)
        if old_nl.request(9, e.set_name, e.entry, 3600):
            raise RuntimeError("old client refused an add")

    def bin_ban() -> None:  # the `ipset` binary (the old fallback path)
        e = R.ban_entry(fresh(), allow_net=False, ipv6_prefix=64)
        old_run(OldIpset.add_argv("ipset", e.set_name, e.entry, 3600))

    def pr2_ban() -> None:  # pyroute2's plain API, one call per ban
        e = R.ban_entry(fresh(), allow_net=False, ipv6_prefix=64)
        if e.set_name == "popwatch4":
            pr2.add("popwatch4", e.entry, exclusive=False, timeout=3600)
        else:
            pr2.add("popwatch6", e.entry, family=10, etype="net", exclusive=False, timeout=3600)
    ban_key = "ban_netlink"
    for k in (ban_key, "ban_old_client", "ban_pyroute2_api", "ban_ipset_binary"):
        res[k] = {}
    for present in (0, 1000, 10000):
        fw.ipset.flush("popwatch4")
        fw.ipset.flush("popwatch6")
        if present:
            fw.ban_many(population(present))
        res[ban_key][present] = timed(lambda: fw.ban(fresh(), 3600), samples)
        res["ban_old_client"][present] = timed(old_ban, samples)
        res["ban_pyroute2_api"][present] = timed(pr2_ban, max(20, samples // 4))
        if has_binary:
            res["ban_ipset_binary"][present] = timed(bin_ban, max(20, samples // 4))
    # bulk load 10k into empty sets: after (netlink batches), before (one `ipset restore`)
    items = population(10000, offset=50_000)
    if has_binary:
        fw.ipset.flush("popwatch4")
        fw.ipset.flush("popwatch6")
        entries = [(e.set_name, e.entry, 3600) for e in
                   (R.ban_entry(ip, allow_net=False, ipv6_prefix=64) for ip, _ in items)]
        t0 = time.perf_counter()
        old.restore(entries)
        res["bulk_10k_before_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        old.entries()
        res["read_10k_before_s"] = round(time.perf_counter() - t0, 3)
    fw.ipset.flush("popwatch4")
    fw.ipset.flush("popwatch6")
    t0 = time.perf_counter()
    n = fw.ban_many(items)
    res["bulk_10k_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    res["bulk_entries"] = len(fw.bans())
    res["read_10k_s"] = round(time.perf_counter() - t0, 3)
    assert n == 10000 and res["bulk_entries"] == 10000, res["bulk_entries"]
    old_nl.close()
    pr2.close()
    res["poll_at_10k"] = timed(fw.counters, samples)
    modes = ["per-source", "global"]
    k = [0]

    def retune() -> None:
        k[0] += 1
        fw.set_limit(PortLimit(110, modes[k[0] % 2], Rate.parse(f"{k[0] % 50 + 1}/second"), 10))
    res["retune"] = timed(retune, max(20, samples // 5))
    fw.uninstall()

    # ----- baseline: one iptables rule per banned IP (the seed's approach)
    base: dict[str, Any] = {"append_rule": {}}
    cnt = [2 * 10**6]

    def add_rule() -> None:
        cnt[0] += 1
        run([ipt, "-w", "-A", "INPUT", "-s", v4(cnt[0]), "-j", "DROP"])
    for present in (0, 1000, 10000):
        run([ipt, "-w", "-F", "INPUT"])
        if present:
            text = "*filter\n" + "".join(f"-A INPUT -s {v4(i)}/32 -j DROP\n" for i in range(present)) + "COMMIT\n"
            run([restore, "-w", "--noflush"], text)
        base["append_rule"][present] = timed(add_rule, max(20, samples // 5))
    run([ipt, "-w", "-F", "INPUT"])
    t0 = time.perf_counter()
    for _ in range(1000):
        add_rule()
    base["append_1k_one_by_one_s"] = round(time.perf_counter() - t0, 3)
    text = "*filter\n" + "".join(f"-A INPUT -s {v4(i)}/32 -j DROP\n" for i in range(10000)) + "COMMIT\n"
    run([ipt, "-w", "-F", "INPUT"])
    run([restore, "-w", "--noflush"], text)
    base["poll_iptables_save_at_10k"] = timed(lambda: run([save, "-c"]), 20)
    run([ipt, "-w", "-F", "INPUT"])
    res["baseline"] = base
    fw.close()
    try:
        os.unlink(lock)
    except OSError:
        pass
    return res


# ----------------------------------------------------------------------------- outside

def outer(backends: list[str], samples: int) -> int:
    if os.geteuid() != 0:
        print("needs root (it creates a network namespace)", file=sys.stderr)
        return 3
    results = []
    for backend in backends:
        ns = f"pwfwbench-{os.getpid()}-{secrets.token_hex(2)}"
        run(["ip", "netns", "add", ns])
        try:
            cp = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inner", backend,
                                 "--samples", str(samples)], capture_output=True, text=True, timeout=900,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
            if cp.returncode != 0:
                print(cp.stderr, file=sys.stderr)
                return 1
            results.append(json.loads(cp.stdout))
        finally:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for r in results:
        print_report(r)
    by = {r["backend"]: r for r in results}
    if "nft" in by and "nftables" in by:
        print_side_by_side(by["nft"], by["nftables"])
    print(json.dumps(results))
    return 0


def print_side_by_side(a: dict[str, Any], b: dict[str, Any]) -> None:
    """iptables-nft (+ ipset) vs the native nftables backend, measured in the same run."""
    print("\n== side by side: nft (iptables-nft binaries + ipset) vs nftables (table inet popwatch)")
    print(f"{'':<36} | {'nft':>10} | {'nftables':>10} | ratio")
    rows = [(f"ban, {n} present (median ms)", a["ban_netlink"][n]["median_ms"], b["ban_netlink"][n]["median_ms"])
            for n in ("0", "1000", "10000")]
    rows += [("bulk 10k bans (s)", a["bulk_10k_s"], b["bulk_10k_s"]),
             ("counter poll at 10k (median ms)", a["poll_at_10k"]["median_ms"], b["poll_at_10k"]["median_ms"]),
             ("counter poll at 10k (p99 ms)", a["poll_at_10k"]["p99_ms"], b["poll_at_10k"]["p99_ms"]),
             ("retune (median ms)", a["retune"]["median_ms"], b["retune"]["median_ms"])]
    for name, x, y in rows:
        print(f"{name:<36} | {x:>10.3f} | {y:>10.3f} | {x / y if y else 0:>5.1f}x")
    c = b["check_enforcement_at_10k"]
    print(f"nftables self-heal check at 10k (check_enforcement): {c['median_ms']:.3f} ms median, "
          f"{c['p99_ms']:.3f} ms p99")
    ok = (b["ban_netlink"]["10000"]["median_ms"] <= 0.2, b["poll_at_10k"]["median_ms"] <= 1, b["bulk_10k_s"] <= 0.3)
    print("nftables targets (ban<=0.2ms@10k, poll<=1ms@10k, bulk<=0.3s):",
          *(["MISS", "ok"][o] for o in ok))


def print_report(r: dict[str, Any]) -> None:
    if r["backend"] == "nftables":
        return  # printed in the side-by-side table (its own baseline is in the JSON)
    b = r["baseline"]
    print(f"\n== backend {r['backend']} (popwatch: ipset bans)   vs   baseline: one iptables rule per IP")
    print(f"{'bans present':>14} | {'ban (now) med / p99 ms':>23} | {'before: old client':>18} | "
          f"{'pyroute2 IPSet.add':>18} | {'ipset binary':>12} | {'baseline iptables -A med / p99 ms':>34} | ratio")
    for n in ("0", "1000", "10000"):
        nl, ba = r["ban_netlink"][n], b["append_rule"][n]
        oc, pa = r["ban_old_client"][n]["median_ms"], r["ban_pyroute2_api"][n]["median_ms"]
        bi = r["ban_ipset_binary"].get(n, {}).get("median_ms", float("nan"))
        print(f"{n:>14} | {nl['median_ms']:>10.3f} / {nl['p99_ms']:<10.3f} | {oc:>18.3f} | {pa:>18.3f} | "
              f"{bi:>12.3f} | {ba['median_ms']:>17.3f} / {ba['p99_ms']:<14.3f} | {ba['median_ms'] / nl['median_ms']:>6.0f}x")
    before = r.get("bulk_10k_before_s")
    print(f"bulk load 10k bans: {r['bulk_10k_s']:.3f} s  (before, one `ipset restore`: "
          f"{'n/a' if before is None else f'{before:.3f} s'}; baseline: 1k rules one by one took "
          f"{b['append_1k_one_by_one_s']:.1f} s)")
    rb = r.get("read_10k_before_s")
    print(f"read back 10k bans (bans()): {r['read_10k_s']:.3f} s  (before, `ipset save`: "
          f"{'n/a' if rb is None else f'{rb:.3f} s'})")
    p = r["poll_at_10k"]
    print(f"counter poll at 10k bans: {p['median_ms']:.2f} ms median, {p['p99_ms']:.2f} ms p99  "
          f"(baseline iptables-save -c at 10k rules: {b['poll_iptables_save_at_10k']['median_ms']:.1f} ms)")
    t = r["retune"]
    print(f"one retune (set_limit, v4+v6, counters carried): {t['median_ms']:.2f} ms median, "
          f"{t['p99_ms']:.2f} ms p99")
    ok = (r["ban_netlink"]["10000"]["median_ms"] <= 2, p["median_ms"] <= 3, r["bulk_10k_s"] <= 0.5)
    print("targets (ban<=2ms@10k, poll<=3ms@10k, bulk<=0.5s):", ["MISS", "ok"][ok[0]], ["MISS", "ok"][ok[1]],
          ["MISS", "ok"][ok[2]])
    ok13 = r["ban_netlink"]["10000"]["median_ms"] <= 0.2
    print("target issue 13 (one ban <= 0.2 ms median at 10k):", ["MISS", "ok"][ok13])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="nft,nftables,legacy")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--inner", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inner:
        print(json.dumps(inner(a.inner, a.samples)))
        return 0
    return outer([b for b in a.backends.split(",") if b], a.samples)


if __name__ == "__main__":
    raise SystemExit(main())
