"""README claims, proved against the real kernel in a lab namespace, through the same wiring a
user gets (no ``exempt=`` or backend objects built by hand: the ``popwatch`` command itself).

* "Never locked out": the SSH session's client and the allow-list are never rate-limited (nor
  banned), whatever limit is set (README "Real use").
* ``policy.ipv6_prefix``: an IPv6 ban covers that prefix in the kernel set, and traffic from
  the prefix is dropped (README "Configuration").
* ``popwatch undo --any`` includes auto-bans; plain ``undo`` only a person's actions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .nslab import Lab
from .test_fw_cli import cli
from .test_policy_netns import CONFIG, Watch, dove, wait_for
from .test_policy_netns import watch as watch  # noqa: PLC0414 - the fixture, reused

pytestmark = pytest.mark.netns


def test_ssh_client_and_allow_list_are_never_rate_limited_by_default(lab: Lab, tmp_path: Path) -> None:
    """A global limit of 1/s burst 1 on 110, set by ``popwatch limit`` run from an SSH session
    whose client is c0 (SSH_CONNECTION), with c1 in the config's allow-list: c0 and c1 connect
    every time; c2, neither, is limited (so the limit is real)."""
    c0, c1 = lab.hosts["c0"], lab.hosts["c1"]
    conf = tmp_path / "popwatch.toml"
    conf.write_text(f'[policy]\nallow = ["{c1.v4}/32", "{c1.v6}/128"]\n')
    env = {"SSH_CONNECTION": f"{c0.v4} 50022 192.0.2.1 22"}
    r = cli(lab, tmp_path, "--config", str(conf), "limit", "110", "--mode", "global",
            "--rate", "1/second", "--burst", "1", env=env)
    assert r.returncode == 0, r.stderr
    lab.listen()
    limited = lab.burst("c2", 110, 10)
    # the limit bites a plain source: a dropped SYN costs the 0.5 s connect timeout, so at most
    # about one in three passes (1 token/s); an exempt source connects every time, fast
    assert limited.timeout >= 4, limited
    assert lab.burst("c0", 110, 15).ok == 15                  # the admin's SSH client: never
    assert lab.burst("c1", 110, 15).ok == 15                  # the allow-list: never
    assert lab.burst("c1", 110, 8, family=6).ok == 8
    # and a ban of them is refused by the same wiring
    assert cli(lab, tmp_path, "--config", str(conf), "ban", c0.v4, env=env).returncode == 4
    assert cli(lab, tmp_path, "--config", str(conf), "ban", c1.v4, env=env).returncode == 4
    assert lab.burst("c0", 110, 3).ok == 3


@pytest.mark.parametrize("prefix", [56, 128])
def test_ipv6_prefix_other_than_64_end_to_end(lab: Lab, tmp_path: Path, prefix: int) -> None:
    """``ipv6_prefix = 56``: a ban of one address in c0's /56 (not its /64) drops c0;
    ``= 128``: a ban of c0's neighbour in the same /64 leaves c0 alone, a ban of c0 drops it."""
    c0 = lab.hosts["c0"]  # 2001:db8:1::10
    conf = tmp_path / "popwatch.toml"
    conf.write_text(f"[policy]\nipv6_prefix = {prefix}\n")
    lab.listen()
    assert lab.burst("c0", 110, 2, family=6).ok == 2
    target = "2001:db8:1:ff::1" if prefix == 56 else "2001:db8:1::11"
    r = cli(lab, tmp_path, "--config", str(conf), "ban", target)
    assert r.returncode == 0, r.stderr
    members = lab.run(lab.server, ["ipset", "list", "popwatch6"]).stdout.split("Members:", 1)[1].split()
    want = "2001:db8:1::/56" if prefix == 56 else "2001:db8:1::11"
    assert members[0] == want and len([m for m in members if ":" in m]) == 1, members
    bans = {b["ip"] for b in json.loads(cli(lab, tmp_path, "--config", str(conf), "bans", "--json").stdout)}
    assert bans == {target} or bans == {want}, bans
    if prefix == 56:
        assert lab.burst("c0", 110, 2, family=6).timeout == 2   # c0 is in the banned /56
    else:
        assert lab.burst("c0", 110, 2, family=6).ok == 2        # a /128 ban: the neighbour only
        assert cli(lab, tmp_path, "--config", str(conf), "ban", c0.v6).returncode == 0
        assert lab.burst("c0", 110, 2, family=6).timeout == 2
    assert lab.burst("c0", 110, 2).ok == 2                       # IPv4 untouched


def test_undo_any_includes_auto_bans(lab: Lab, watch: Watch) -> None:
    watch.cfg.write_text(CONFIG.replace("[policy]", "[policy]\nauto_ban = true"))
    watch.start()
    watch.write(dove("203.0.113.10", 10))
    wait_for(lambda: "203.0.113.10" in watch.members(), what="the auto-ban")
    watch.stop()
    watch.cli("ban", "203.0.113.44")                   # a person's ban, after it
    # order in the audit: auto-ban of .10 first, then the person's ban of .44
    assert [(a["action"], a["target"], a["origin"]) for a in watch.audit() if a["action"] == "ban"][-2:] == [
        ("ban", "203.0.113.10", "auto"), ("ban", "203.0.113.44", "cli")]
    watch.cli("undo")                                   # the person's ban is lifted
    assert set(watch.members()) == {"203.0.113.10"}
    cp = watch.cli("undo", check=False)                 # plain undo never touches the auto-ban
    assert cp.returncode == 4 and "nothing to undo" in cp.stderr, (cp.stdout, cp.stderr)
    assert "203.0.113.10" in watch.members()
    watch.cli("undo", "--any")                          # --any does
    assert "203.0.113.10" not in watch.members()
    undone = [a for a in watch.audit() if a.get("undoes")]
    assert [a["target"] for a in undone] == ["203.0.113.44", "203.0.113.10"]
