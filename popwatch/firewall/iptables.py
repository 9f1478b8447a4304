"""The ``nft`` backend: the host's ``iptables-nft``/``ip6tables-nft`` binaries, always ``-w``.

The logic both kernel backends share lives in :mod:`.kernel`; the ``legacy`` backend
(:mod:`.iptc_backend`) only swaps how a plan is read and applied.

* Reads: ``iptables -w -S POPWATCH -v`` (one chain, with counters: ~2 ms, flat in the number of
  bans because bans live in ipset sets). v4 and v6 are read in parallel.
* Writes: one ``iptables-restore -w --noflush -c`` per family and change, so a retune is atomic
  and carries its counters; only the rules of the port being changed are replaced.
* Bans: :mod:`.ipset` (netlink via pyroute2, no ``ipset`` binary).
* Two popwatch processes (the TUI and a CLI ``popwatch limit``) serialise their
  read-modify-write on ``lock_path``; the xtables lock is left to the binaries (``-w``).
"""

from __future__ import annotations

import errno
import subprocess

from . import rules as R
from .base import FirewallError
from .ipset import run_binary
from .kernel import KernelFirewall, NftCounters, maybe_root


class IptablesFirewall(KernelFirewall):
    """``--backend nft``: iptables-nft binaries (or, with ``flavour="legacy"``, the legacy ones,
    which the conformance suite and the iptc backend's fallbacks use)."""

    name = "nft"

    def __init__(self, *, flavour: str = "nft", **kw: object) -> None:
        if flavour not in ("nft", "legacy"):
            raise FirewallError(f"bad iptables flavour {flavour!r}")
        self.flavour = flavour
        self.bins = {
            4: (f"iptables-{flavour}", f"iptables-{flavour}-restore", f"iptables-{flavour}-save"),
            6: (f"ip6tables-{flavour}", f"ip6tables-{flavour}-restore", f"ip6tables-{flavour}-save"),
        }
        self.describe_binaries = {4: self.bins[4][0], 6: self.bins[6][0]}
        if flavour == "legacy":
            self.name = "legacy-binaries"
        super().__init__(**kw)  # type: ignore[arg-type]  # keyword options pass through to KernelFirewall
        self._nft: NftCounters | None = NftCounters() if flavour == "nft" and kw.get("netlink", True) else None
        self.nf_tables = flavour == "nft"
        self._layout: dict[int, tuple[tuple[int, ...], list[R.ParsedRule]]] = {}

    def _w(self) -> list[str]:
        return ["-w", str(self.wait)]

    def _state(self, family: R.Family, with_input: bool = False) -> R.ChainState:
        ipt = self.bins[family][0]
        st = R.ChainState()
        try:
            text = run_binary([ipt, *self._w(), "-S", R.CHAIN, "-v"])
        except FirewallError as e:
            if "incompatible" in str(e):
                # iptables-nft 1.8.9 says "incompatible" for a chain that does not exist
                if f"-N {R.CHAIN}" in self._read([ipt, *self._w(), "-S"]).splitlines():
                    raise FirewallError(f"{e} (popwatch's chain was changed with nft; "
                                        f"run `popwatch uninstall` or remove it with nft)") from None
            elif "No chain" not in str(e) and "does not exist" not in str(e):
                raise maybe_root(e) from None
            text = None
        if text is not None:
            st.exists = True
            st.rules = R.parse_chain(text)
        if with_input:
            st.jumps, st.jump_first = R.count_jumps(self._read([ipt, *self._w(), "-S", "INPUT"]))
        return st

    def _apply(self, family: R.Family, work: R.Work) -> None:
        restore = self.bins[family][1]
        self._write([restore, *self._w(), "--noflush", "-c"], R.render_restore(work.ops))
        if self._recording:
            return
        self._layout.pop(family, None)
        # read back: the kernel must now hold exactly the planned chain
        after = self._state(family)
        want = R.expected_keys(work)
        if after.exists and [R.sem_key(r.args) for r in after.rules] != want and want:
            raise FirewallError(f"{restore}: the chain read back differs from what was written")

    def _poll_rules(self) -> dict[R.Family, list[R.ParsedRule]]:
        if self.flavour == "nft" and self._nft is not None:
            try:
                return {fam: self._poll_nft(fam) for fam in self.families}
            except OSError:
                self._nft.close()
                self._nft = None  # fall back to the binaries for good
        return self._poll_binaries()

    def _poll_nft(self, family: R.Family) -> list[R.ParsedRule]:
        assert self._nft is not None
        try:
            live = self._nft.rules(family)
        except OSError as e:
            if e.errno == errno.ENOENT:  # no table/chain: nothing installed
                return []
            raise
        handles = tuple(h for h, _, _ in live)
        cached = self._layout.get(family)
        if cached is None or cached[0] != handles:
            st = self._state(family)          # what the rules mean, from iptables -S
            again = self._nft.rules(family)
            if tuple(h for h, _, _ in again) != handles or len(st.rules) != len(handles):
                return st.rules                # changed meanwhile: use the slow read this time
            cached = (handles, st.rules)
            self._layout[family] = cached
        return [R.ParsedRule(r.args, p, b, r.role, r.port, r.target, r.limit, r.hl_name)
                for r, (_, p, b) in zip(cached[1], live, strict=False)]

    def _jump_count(self, family: R.Family) -> int:
        if self._nft is not None:
            try:
                return self._nft.jumps(family)
            except OSError:
                pass
        return R.count_jumps(self._read([self.bins[family][0], *self._w(), "-S", "INPUT"]))[0]

    def _poll_binaries(self) -> dict[R.Family, list[R.ParsedRule]]:
        procs = {}
        for fam in self.families:
            procs[fam] = subprocess.Popen([self.bins[fam][0], *self._w(), "-S", R.CHAIN, "-v"],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        out: dict[R.Family, list[R.ParsedRule]] = {}
        for fam, p in procs.items():
            text, _ = p.communicate(timeout=30)
            out[fam] = R.parse_chain(text) if p.returncode == 0 else []
        return out

    def _after_uninstall(self, family: R.Family) -> None:
        if self.flavour != "nft" or self._recording:
            return
        # A filter table that is now completely empty (only the three base chains, policy
        # ACCEPT, no rules) was most likely created by popwatch's install: remove it so that
        # iptables-save prints exactly what it printed before.
        try:
            text = run_binary([self.bins[family][2], "-t", "filter"])
        except FirewallError:
            return
        body = [l for l in text.splitlines() if l and not l.startswith("#")]
        empty = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", "COMMIT"]
        if [l.split(" [")[0] for l in body] == [l.split(" [")[0] for l in empty]:
            try:
                run_binary(["nft", "delete", "table", "ip" if family == 4 else "ip6", "filter"])
            except FirewallError:
                pass
