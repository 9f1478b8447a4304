"""The UI's seams (issue 16): one door into the core (the Controller), one handler for failed
workers, read-only decided by check_action, styles and help packaged as files."""

from __future__ import annotations

import ast
import tomllib
from importlib import resources
from pathlib import Path

from textual.widgets import Static

import popwatch.ui
from popwatch.firewall.base import FirewallError, NoFirewall
from popwatch.ui.app import PopwatchApp
from popwatch.ui.main_screen import MainScreen
from popwatch.ui.screens import ConfirmScreen, HelpScreen
from popwatch.ui.widgets import AttackerTable

UI = Path(popwatch.ui.__file__).parent
ROOT = UI.parent.parent
#: names that lead into the core; only the Controller may follow them
CORE = {"monitor", "store", "firewall", "protector", "campaigns", "healer"}


async def settle(pilot, app: PopwatchApp) -> None:
    await pilot.pause()
    app.refresh_view(force=True)
    await pilot.pause()


def messages(app: PopwatchApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


def trees() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text(), str(p)) for p in sorted(UI.glob("*.py"))}


def test_only_the_controller_reaches_into_the_core():
    found = []
    for name, tree in trees().items():
        if name == "controller.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and node.attr in CORE:
                found.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"getattr", "cast"}:
                found.append(f"{name}:{node.lineno} {node.func.id}()")
    assert "main_screen.py" in trees() and not found, found


def test_workers_do_not_catch_everything_and_one_handler_reports():
    handlers = []
    for name, tree in trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ExceptHandler):
                caught = ast.unparse(node.type) if node.type is not None else "everything"
                assert caught not in {"Exception", "BaseException", "everything"}, f"{name}:{node.lineno}"
            if isinstance(node, ast.FunctionDef) and any("Worker.StateChanged" in ast.unparse(d)
                                                         for d in node.decorator_list):
                handlers.append(f"{name}:{node.name}")
    assert handlers == ["app.py:worker_failed"]


async def test_a_failed_ban_is_a_notification_and_the_app_runs_on(demo, monkeypatch):
    def broken(*a: object, **kw: object) -> None:  # stands in for any firewall method
        raise FirewallError("the kernel said no")

    app = demo.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        ip = app.query_one(AttackerTable).selected.ip
        monkeypatch.setattr(demo.sim, "ban", broken)
        await pilot.press("b")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert any(m == "ban failed: the kernel said no" for m in messages(app)), messages(app)
        assert ip not in demo.sim.bans() and app.is_running
        await pilot.press("s")  # still answering keys
        await pilot.pause()
        assert app.sort == "rate"


async def test_read_only_is_check_action_alone(demo):
    demo.monitor.firewall = NoFirewall()
    app = demo.app()
    assert "on_key" not in PopwatchApp.__dict__
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        main = app.main
        assert isinstance(main, MainScreen) and app.screen is main
        assert main.check_action("why_read_only", ()) is True
        await pilot.press("u")  # greyed: its own binding stands aside, the hidden one says why
        await pilot.pause()
        assert any("backend is 'none'" in m for m in messages(app))
        await pilot.press("slash")  # typing in the filter: no key is taken from the input
        await pilot.pause()
        assert main.check_action("why_read_only", ()) is False and main.check_action("ban", ()) is False
        app._notifications.clear()
        await pilot.press("b", "u")
        await pilot.pause()
        assert not messages(app) and main.query_one("#filter").value == "bu"


def test_styles_and_help_are_packaged_files():
    assert PopwatchApp.CSS == "" and PopwatchApp.CSS_PATH == UI / "popwatch.tcss"
    files = resources.files("popwatch.ui")
    assert "#filter.-show" in files.joinpath("popwatch.tcss").read_text()
    help_md = files.joinpath("help.md").read_text()
    assert help_md.startswith("Attackers: one row per address")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["popwatch"]
    assert "ui/*.tcss" in data and "ui/*.md" in data


async def test_help_screen_shows_the_packaged_text(demo):
    app = demo.app()
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = app.screen.query_one(Static).render().plain
        first = resources.files("popwatch.ui").joinpath("help.md").read_text().split(". ")[0]
        assert first in " ".join(text.split())
