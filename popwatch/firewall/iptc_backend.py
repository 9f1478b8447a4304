"""The ``legacy`` backend: python-iptables (``iptc``) for the rules, on legacy-iptables hosts only.

python-iptables speaks only the legacy x_tables API: on an nf_tables host even a read creates
legacy tables whose rules are enforced but invisible to ``iptables``/``nft`` (``detect.py``
never picks this backend there). It is also not thread-safe (``Table`` is a process-wide
singleton), ignores the xtables lock, and with autocommit swallows commit errors. So here:

* every iptc call runs on the process's one firewall thread (:data:`.thread.FW_THREAD`), whoever calls;
* autocommit is off; a change is refresh -> edit -> commit under ``flock(xtables_lock)``
  (``/run/xtables.lock``, the lock ``iptables -w`` takes), so a concurrent fail2ban/docker
  change is neither lost nor overwritten; EAGAIN is retried; the chain is read back after
  every commit and compared with the plan;
* bans still go to the ipset sets (:mod:`.ipset`, in-process netlink), like the nft backend.

python-iptables could do everything popwatch needs, with one workaround: it does not run the
libxt_hashlimit defaults, so a hashlimit rule without an explicit ``--hashlimit-htable-expire``
and ``--hashlimit-htable-gcinterval`` is refused by the kernel (EINVAL). popwatch always writes
the expiry (see ``rules.hashlimit_expire_ms``) and sets the gc interval to its default here.
No binary fallback for rules was needed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from . import rules as R
from .base import FirewallError, flock_wait
from .kernel import KernelFirewall, maybe_root
from .thread import FW_THREAD

T = TypeVar("T")

DEFAULT_XTABLES_LOCK = "/run/xtables.lock"
_LIBDIRS = ("/usr/lib/x86_64-linux-gnu/xtables", "/usr/lib/aarch64-linux-gnu/xtables",
            "/usr/lib64/xtables", "/usr/lib/xtables", "/usr/libexec/xtables")

def load_iptc() -> Any:
    """Import python-iptables, pointing it at the legacy extension directory if needed."""
    if "XTABLES_LIBDIR" not in os.environ:
        for d in _LIBDIRS:
            if os.path.isdir(d):
                os.environ["XTABLES_LIBDIR"] = d
                break
    try:
        import iptc
        from iptc import ip4tc, ip6tc
    except Exception as e:  # noqa: BLE001 - ImportError, or XTablesError when libxtables is missing
        raise FirewallError(f"python-iptables cannot be loaded ({e}); install the 'iptables' "
                            f"package (libxtables) or use --backend nft") from None
    # python-iptables decides whether a target name is a user chain by opening *every* table
    # (filter, mangle, raw, nat, security): reading or writing any rule that jumps to a chain
    # (INPUT's "-j POPWATCH", an admin's "-j ADMIN") would create four empty legacy tables that
    # were not there before, and iptables-save would differ after uninstall. popwatch only
    # works in the filter table, so a rule's tables are just that one.
    ip4tc.Rule.tables = property(lambda self: [ip4tc.Table(ip4tc.Table.FILTER)])
    ip6tc.Rule6.tables = property(lambda self: [ip6tc.Table6(ip6tc.Table6.FILTER)])
    return iptc


def _retryable(e: Exception) -> bool:
    text = str(e)
    return "temporarily unavailable" in text or "Resource busy" in text or \
        getattr(e, "errno", None) in (errno.EAGAIN, errno.EBUSY)


class IptcFirewall(KernelFirewall):
    """``--backend legacy``: python-iptables rules, ipset bans."""

    name = "legacy"
    describe_binaries: Mapping[int, str] = {4: "iptables-legacy", 6: "ip6tables-legacy"}

    def __init__(self, *, xtables_lock: str = DEFAULT_XTABLES_LOCK, retries: int = 20, **kw: Any) -> None:
        super().__init__(**kw)
        self.xtables_lock = xtables_lock
        self.retries = retries
        self._iptc = load_iptc()
        #: per family: the chain's rule fingerprints and what they mean (see _poll_rules)
        self._layout: dict[int, tuple[tuple[bytes, ...], list[R.ParsedRule]]] = {}

    # ------------------------------------------------------------------ iptc plumbing
    def _table(self, family: R.Family) -> Any:
        iptc = self._iptc
        t = iptc.Table(iptc.Table.FILTER) if family == 4 else iptc.Table6(iptc.Table6.FILTER)
        t.autocommit = False
        return t

    @contextmanager
    def _xlock(self) -> Iterator[None]:
        with flock_wait(self.xtables_lock, self.wait, f"the xtables lock {self.xtables_lock} is held by "
                        f"another program for more than {self.wait}s"):
            yield

    def _refresh(self, t: Any) -> None:
        for attempt in range(self.retries):
            try:
                t.refresh()
                return
            except Exception as e:  # noqa: BLE001 - iptc.IPTCError (its only exception class)
                if not _retryable(e) or attempt == self.retries - 1:
                    raise maybe_root(FirewallError(f"python-iptables: {e}")) from None
                time.sleep(0.005 * (attempt + 1))

    def _args(self, rule: Any) -> tuple[str, ...]:
        """An iptc rule -> iptables argument list (enough for ``rules.classify``/``sem_key``)."""
        args: list[str] = []
        proto = rule.protocol
        if proto and proto not in ("ip", "0", "all", "ipv6"):
            args += ["-p", proto]
        for m in rule.matches:
            args += ["-m", m.name]
            for k, v in m.get_all_parameters().items():
                args += [f"--{k}", *v]
        tname = rule.target.name if rule.target is not None else ""
        if tname:
            args += ["-j", tname]
            for k, v in rule.target.get_all_parameters().items():
                args += [f"--{k}", *v]
        return tuple(args)

    def _rule(self, family: R.Family, args: tuple[str, ...], counters: tuple[int, int] | None) -> Any:
        """iptables argument list -> iptc Rule (the small grammar popwatch's rules use)."""
        iptc = self._iptc
        rule = iptc.Rule() if family == 4 else iptc.Rule6()
        cur: Any = None
        i = 0
        while i < len(args):
            tok = args[i]
            if tok == "-p":
                rule.protocol = args[i + 1]
                i += 2
            elif tok == "-m":
                cur = rule.create_match(args[i + 1])
                i += 2
            elif tok == "-j":
                cur = rule.create_target(args[i + 1])
                i += 2
            elif tok.startswith("--") and cur is not None:
                vals = []
                i += 1
                while i < len(args) and not args[i].startswith("-"):
                    vals.append(args[i])
                    i += 1
                setattr(cur, tok[2:].replace("-", "_"), vals[0] if len(vals) == 1 else vals)
                if tok == "--hashlimit-htable-expire":
                    cur.hashlimit_htable_gcinterval = "1000"
            else:
                raise FirewallError(f"python-iptables: cannot express {tok!r} in {' '.join(args)}")
        if counters is not None:
            rule.counters = counters
        return rule

    def _read_chain(self, t: Any, family: R.Family) -> R.ChainState:
        iptc = self._iptc
        st = R.ChainState()
        if not t.is_chain(R.CHAIN):
            return st
        st.exists = True
        for r in iptc.Chain(t, R.CHAIN).rules:
            args = self._args(r)
            role, port, limit, hl = R.classify(list(args))
            p, b = r.get_counters()
            st.rules.append(R.ParsedRule(args, p, b, role, port, R.opt(list(args), "-j") or "", limit, hl))
        return st

    def _read_jumps(self, t: Any) -> tuple[int, bool]:
        iptc = self._iptc
        n, first = 0, False
        for k, r in enumerate(iptc.Chain(t, "INPUT").rules):
            if self._is_jump(r):
                n += 1
                first = first or k == 0
        return n, first

    @staticmethod
    def _is_jump(r: Any) -> bool:
        return (r.target is not None and r.target.name == R.CHAIN and not r.matches
                and r.src in ("0.0.0.0/0.0.0.0", "::/0") and r.dst in ("0.0.0.0/0.0.0.0", "::/0")
                and not r.in_interface and not r.out_interface)

    # ------------------------------------------------------------------ KernelFirewall hooks
    def _state(self, family: R.Family, with_input: bool = False) -> R.ChainState:
        def read() -> R.ChainState:
            t = self._table(family)
            self._refresh(t)
            st = self._read_chain(t, family)
            if with_input:
                st.jumps, st.jump_first = self._read_jumps(t)
            return st
        return FW_THREAD.call(read)

    def _apply(self, family: R.Family, work: R.Work) -> None:
        if self._recording:
            b = self.describe_binaries[family]
            self.planned.append(f"# python-iptables, one commit under flock({self.xtables_lock}):")
            for op in work.ops:
                import shlex
                self.planned.append(shlex.join(op.command(b)))
            return
        self._check_writable()
        FW_THREAD.call(self._apply_now, family, work)

    def _apply_now(self, family: R.Family, work: R.Work) -> None:
        want = R.expected_keys(work)
        last: Exception | None = None
        for attempt in range(self.retries):
            try:
                with self._xlock():
                    t = self._table(family)
                    self._refresh(t)
                    for op in work.ops:
                        self._do(t, family, op)
                    t.commit()
                    self._refresh(t)
                    after = self._read_chain(t, family)
            except FirewallError:
                raise
            except Exception as e:  # noqa: BLE001 - iptc.IPTCError (its only exception class)
                last = e
                t = self._table(family)
                try:
                    t.refresh()
                except Exception:  # noqa: BLE001 - the retry below refreshes again
                    pass
                if _retryable(e) and attempt < self.retries - 1:
                    time.sleep(0.01 * (attempt + 1))
                    continue
                raise maybe_root(FirewallError(f"python-iptables commit failed: {e}")) from None
            if want and [R.sem_key(r.args) for r in after.rules] != want:
                raise FirewallError("python-iptables: the chain read back after commit differs "
                                    "from what was written")
            return
        raise FirewallError(f"python-iptables commit failed: {last}")

    def _do(self, t: Any, family: R.Family, op: R.Op) -> None:
        iptc = self._iptc
        if op.kind == "new_chain":
            if not t.is_chain(R.CHAIN):
                t.create_chain(R.CHAIN)
            else:
                iptc.Chain(t, R.CHAIN).flush()
            return
        if op.kind == "flush_chain":
            iptc.Chain(t, R.CHAIN).flush()
            return
        if op.kind == "del_chain":
            t.delete_chain(R.CHAIN)
            return
        if op.kind == "jump_insert":
            rule = iptc.Rule() if family == 4 else iptc.Rule6()
            rule.create_target(R.CHAIN)
            iptc.Chain(t, "INPUT").insert_rule(rule, 0)
            return
        if op.kind == "jump_delete":
            for r in iptc.Chain(t, "INPUT").rules:
                if self._is_jump(r):
                    iptc.Chain(t, "INPUT").delete_rule(r)
                    return
            return
        chain = iptc.Chain(t, R.CHAIN)
        if op.kind == "delete":
            assert op.index is not None
            chain.delete_rule(chain.rules[op.index - 1])
            return
        assert op.rule is not None
        rule = self._rule(family, op.rule.args, op.counters)
        if op.kind == "insert":
            assert op.index is not None
            chain.insert_rule(rule, op.index - 1)
        else:
            chain.append_rule(rule)

    def _raw_counters(self, t: Any, family: R.Family) -> list[tuple[bytes, int, int]]:
        """(rule bytes without counters, packets, bytes) for each rule of the chain, straight
        from libiptc's entries: no python-iptables Rule objects (building those costs ~0.2 ms
        a rule, which made a poll 5 ms)."""
        from iptc import ip4tc, ip6tc

        etype = ip4tc.ipt_entry if family == 4 else ip6tc.ip6t_entry
        off = etype.counters.offset
        out: list[tuple[bytes, int, int]] = []
        if not t.is_chain(R.CHAIN):
            return out
        e = t.first_rule(R.CHAIN)
        while e:
            raw = ctypes.string_at(ctypes.addressof(e), e.next_offset)
            out.append((raw[:off] + raw[off + 16:], int(e.counters.pcnt), int(e.counters.bcnt)))
            e = t.next_rule(e)
        return out

    def _poll_rules(self) -> dict[R.Family, list[R.ParsedRule]]:
        def poll() -> dict[R.Family, list[R.ParsedRule]]:
            out: dict[R.Family, list[R.ParsedRule]] = {}
            for fam in self.families:
                t = self._table(fam)
                self._refresh(t)
                live = self._raw_counters(t, fam)
                prints = tuple(fp for fp, _, _ in live)
                cached = self._layout.get(fam)
                if cached is None or cached[0] != prints:
                    rules = self._read_chain(t, fam).rules  # same snapshot: consistent with live
                    if len(rules) != len(prints):
                        out[fam] = rules
                        continue
                    cached = (prints, rules)
                    self._layout[fam] = cached
                out[fam] = [R.ParsedRule(r.args, p, b, r.role, r.port, r.target, r.limit, r.hl_name)
                            for r, (_, p, b) in zip(cached[1], live, strict=False)]
            return out
        return FW_THREAD.call(poll)

    def _jump_count(self, family: R.Family) -> int:
        """Jumps to popwatch's chain in INPUT, from libiptc's raw entries (no Rule objects)."""
        def read() -> int:
            t = self._table(family)
            self._refresh(t)
            if not t.is_chain("INPUT"):
                return 0
            n, e = 0, t.first_rule("INPUT")
            while e:
                n += t.get_target(e) in (R.CHAIN, R.CHAIN.encode())
                e = t.next_rule(e)
            return n
        return FW_THREAD.call(read)

    def close(self) -> None:
        super().close()
