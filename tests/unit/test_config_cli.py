"""Config validation and the command line's error contract: one clear line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from popwatch.config import ConfigError, from_dict, load, parse_duration
from popwatch.model import Rate, parse_burst


def run(*args: str, **kw):
    return subprocess.run([sys.executable, "-m", "popwatch", *args], capture_output=True, text=True,
                          timeout=60, **kw)


def test_full_config_round_trip(tmp_path):
    p = tmp_path / "pw.toml"
    p.write_text('ports = [110, 995]\nbackend = "sim"\n[policy]\nauto_ban = true\nmaxretry = 3\n'
                 'findtime = "10m"\nbantime = "2h"\nallow = ["192.0.2.0/24", "2001:db8::1"]\n'
                 '[limits.110]\nmode = "per-source"\nrate = "5/minute"\nburst = 10\n')
    cfg = load(p, required=True)
    assert cfg.ports == [110, 995] and cfg.backend == "sim"
    assert cfg.policy.maxretry == 3 and cfg.policy.findtime == 600 and cfg.policy.bantime == 7200
    assert cfg.policy.allow == ["192.0.2.0/24", "2001:db8::1/128"]
    lim = cfg.limit_for(110)
    assert (lim.mode, str(lim.rate), lim.burst) == ("per-source", "5/minute", 10)
    assert cfg.limit_for(995).mode == "count"


@pytest.mark.parametrize("data, words", [
    ({"portz": [1]}, ["portz"]),
    ({"policy": {"maxretry": 0}}, ["policy.maxretry", "0"]),
    ({"policy": {"maxretry": "five"}}, ["policy.maxretry"]),  # "5" is 5, as for every key
    ({"policy": {"findtime": "ten minutes"}}, ["policy.findtime", "ten minutes"]),
    ({"policy": {"allow": ["example.com"]}}, ["policy.allow", "example.com"]),
    ({"limits": {"110": {"rate": "0/second"}}}, ["limits.110.rate", "0/second"]),
    ({"limits": {"110": {"rate": "100000/second"}}}, ["limits.110.rate", "10000"]),
    ({"limits": {"110": {"burst": -1}}}, ["limits.110.burst", "-1"]),
    ({"limits": {"110": {"mode": "fast"}}}, ["limits.110.mode", "fast"]),
    ({"limits": {"99999": {}}}, ["limits.99999"]),
    ({"backend": "pf"}, ["backend", "pf"]),
])
def test_bad_values_name_the_key_and_value(data, words):
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("text, per_s", [("1/second", 1), ("5/s", 5), ("10/minute", 10 / 60),
                                         ("3/hour", 3 / 3600), ("2/day", 2 / 86400), ("1/min", 1 / 60)])
def test_rate_forms(text, per_s):
    assert abs(Rate.parse(text).per_second - per_s) < 1e-12


@pytest.mark.parametrize("bad", ["", "5", "5/fortnight", "-1/s", "0/s", "1.5/s", "20000/second"])
def test_rate_rejects(bad):
    with pytest.raises(ValueError):
        Rate.parse(bad)


def test_rate_ladder_moves_both_ways():
    r = Rate.parse("1/second")
    assert str(r.step(True)) == "2/second" and str(r.step(False)) == "30/minute"
    assert str(Rate.parse("1/hour").step(False)) == "1/hour"


def test_burst_and_duration():
    assert parse_burst("10") == 10
    for bad in ("0", "x", "10001"):
        with pytest.raises(ValueError):
            parse_burst(bad)
    assert parse_duration("1h") == 3600 and parse_duration(90) == 90
    with pytest.raises(ValueError):
        parse_duration("-5m")


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[policy]\nmaxretry = 'many'\n")
    r = run("--config", str(p), "demo", "--no-tui", "--duration", "1")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "policy.maxretry" in r.stderr
    r = run("--config", str(tmp_path / "missing.toml"), "demo", "--no-tui", "--duration", "1")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_cli_unknown_option_and_bad_value_exit_2():
    for args in (["--bogus"], ["demo", "--speed", "fast"], ["watch", "--ports", "110,abc"],
                 ["--backend", "pf", "status"]):
        r = run(*args)
        assert r.returncode == 2, args
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_help_describes_every_subcommand():
    r = run("--help")
    assert r.returncode == 0
    for sub in ("watch", "demo"):
        assert sub in r.stdout
        h = run(sub, "--help")
        assert h.returncode == 0 and "--no-tui" in h.stdout and "--backend" in h.stdout


# ------------------------------------------------------------------ policy keys, print-default

from popwatch.commands.configcmd import default_toml  # noqa: E402
from popwatch.config import Config  # noqa: E402


def test_print_default_round_trips_to_the_built_in_defaults(tmp_path):
    r = run("config", "--print-default")
    assert r.returncode == 0 and r.stdout == default_toml()
    p = tmp_path / "default.toml"
    p.write_text(r.stdout)
    cfg = load(p, required=True)
    cfg.source_path = None
    assert cfg == Config()
    chk = run("--config", str(p), "config", "--check")
    assert chk.returncode == 0 and "ok" in chk.stdout


def test_print_default_documents_every_key():
    text = default_toml()
    from popwatch.config import _POLICY_KEYS, _TOP_KEYS, _LIMIT_KEYS, _SERVICE_KEYS
    for k in _TOP_KEYS | _POLICY_KEYS | _LIMIT_KEYS | _SERVICE_KEYS:
        assert f"\n{k} = " in text or f"\n# {k} = " in text or f"[{k}" in text or f"[policy.{k}" in text, k


def test_commented_examples_in_the_default_are_valid(tmp_path):
    text = default_toml()
    import re
    uncommented = "\n".join(l[2:] if re.match(r"^# (\[[a-z0-9.]+\]$|[a-z_]+ = )", l) else l
                            for l in text.splitlines())
    p = tmp_path / "all.toml"
    p.write_text(uncommented)
    cfg = load(p, required=True)
    assert cfg.journal is True and cfg.policy.for_service("ssh") == (3, 3600, 86400)
    assert cfg.limit_for(110).mode == "global"


def test_new_policy_keys():
    cfg = from_dict({"policy": {"ban_action": "reject", "recidive_factor": 3, "recidive_max": "2w",
                                "success_grace": "7d", "success_maxretry": 40, "user_ips": 0,
                                "whatif_window": "24h", "services": {"ssh": {"maxretry": 2}}}})
    p = cfg.policy
    assert (p.ban_action, p.recidive_factor, p.recidive_max, p.success_grace) == ("reject", 3.0, 14 * 86400, 7 * 86400)
    assert p.user_ips == 0 and p.whatif_window == 86400 and p.for_service("ssh") == (2, 600, 3600)
    assert p.for_service("pop3") == (5, 600, 3600)
    assert from_dict({"policy": {"success_grace": 0}}).policy.success_grace == 0


@pytest.mark.parametrize("data, words", [
    ({"policy": {"ban_action": "nuke"}}, ["policy.ban_action", "nuke", "drop"]),
    ({"policy": {"recidive_factor": 0.5}}, ["policy.recidive_factor", "0.5"]),
    ({"policy": {"whatif_window": "1m"}}, ["policy.whatif_window", "1m", "15m"]),
    ({"policy": {"whatif_window": "2d"}}, ["policy.whatif_window", "2d", "1d"]),
    ({"policy": {"user_ips": 1}}, ["policy.user_ips", "1"]),
    ({"policy": {"success_maxretry": -3}}, ["policy.success_maxretry", "-3"]),
    ({"policy": {"services": {"telnet": {}}}}, ["policy.services.telnet", "ssh"]),
    ({"policy": {"services": {"ssh": {"maxretry": 0}}}}, ["policy.services.ssh.maxretry", "0"]),
    ({"policy": {"services": {"ssh": {"bantme": "1h"}}}}, ["policy.services.ssh.", "bantme", "bantime"]),
    ({"policy": {"services": {"ssh": {"findtime": "forever"}}}}, ["policy.services.ssh.findtime", "forever"]),
    ({"policy": {"history_max": 5}}, ["policy.history_max", "5"]),
])
def test_bad_new_values_name_key_value_and_allowed(data, words):
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)
