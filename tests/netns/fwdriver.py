"""Drive a popwatch firewall backend inside a network namespace.

python-iptables, the ipset netlink socket and the iptables binaries all act on the network
namespace of the *process*, so the backend runs in a helper process started with
``ip netns exec NS python -m tests.netns.fwdriver BACKEND OPTIONS_JSON``. It reads one JSON
request per line on stdin (``{"m": "ban", "a": [...], "k": {...}}``) and answers one JSON line
(``{"ok": true, "r": ...}`` or ``{"ok": false, "type": "FirewallError", "error": "..."}``).

:class:`FwClient` is the test side.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from popwatch.model import PortLimit, Rate
from tests.deadline import readline_within

CALL_SECONDS = 120  # one backend call (a full kernel sync included); a hung driver fails the test


def limit_from(d: dict[str, Any]) -> PortLimit:
    return PortLimit(int(d["port"]), d.get("mode", "count"), Rate.parse(d.get("rate", "1/second")),
                     int(d.get("burst", 5)))


def _jsonable(v: Any) -> Any:
    if isinstance(v, PortLimit):
        return v.to_json()
    if hasattr(v, "passed") and hasattr(v, "dropped"):
        return {"port": v.port, "passed": v.passed, "dropped": v.dropped}
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def make(backend: str, opts: dict[str, Any]) -> Any:
    if backend == "nft":
        from popwatch.firewall.iptables import IptablesFirewall
        return IptablesFirewall(flavour="nft", **opts)
    if backend == "legacy":
        from popwatch.firewall.iptc_backend import IptcFirewall
        return IptcFirewall(**opts)
    if backend == "legacy-binaries":
        from popwatch.firewall.iptables import IptablesFirewall
        return IptablesFirewall(flavour="legacy", **opts)
    if backend == "nftables":
        from popwatch.firewall.nftables import NftablesFirewall
        return NftablesFirewall(**opts)
    raise SystemExit(f"unknown backend {backend}")


def main() -> None:
    backend, opts = sys.argv[1], json.loads(sys.argv[2])
    fw = make(backend, opts)
    for line in sys.stdin:
        req = json.loads(line)
        args = [limit_from(a) if isinstance(a, dict) and "port" in a else
                [limit_from(d) for d in a] if isinstance(a, list) and a and isinstance(a[0], dict) else a
                for a in req.get("a", [])]
        try:
            r = getattr(fw, req["m"])(*args, **req.get("k", {}))
            out = {"ok": True, "r": _jsonable(r)}
        except Exception as e:  # noqa: BLE001 - reported to the test
            out = {"ok": False, "type": type(e).__name__, "error": str(e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class RemoteError(Exception):
    def __init__(self, type_: str, message: str) -> None:
        super().__init__(f"{type_}: {message}")
        self.type = type_
        self.message = message


class FwClient:
    """A backend living in namespace ``ns`` of ``lab``; call its methods with :meth:`call`."""

    def __init__(self, lab: Any, ns: str, backend: str, **opts: Any) -> None:
        self.backend = backend
        self.proc = lab.popen(ns, [sys.executable, "-m", "tests.netns.fwdriver", backend, json.dumps(opts)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def call(self, method: str, *args: Any, **kw: Any) -> Any:
        enc = [a.to_json() if isinstance(a, PortLimit) else
               [x.to_json() for x in a] if isinstance(a, list) and a and isinstance(a[0], PortLimit) else a
               for a in args]
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"m": method, "a": enc, "k": kw}) + "\n")
        self.proc.stdin.flush()
        line = readline_within(self.proc.stdout, CALL_SECONDS, f"firewall driver ({method})")
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"firewall driver died: {err[-2000:]}")
        out = json.loads(line)
        if not out["ok"]:
            raise RemoteError(out["type"], out["error"])
        return out["r"]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *a, **k: self.call(name, *a, **k)


if __name__ == "__main__":
    main()
