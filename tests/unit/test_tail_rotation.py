"""Rotation under load, and permission denied seen by an unprivileged process.

A writer thread appends sshd/dovecot lines quickly while the file is rotated underneath the
follower; every line written must be seen exactly once, with the right line number within the
file it was written to. All loops are bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from popwatch.model import RawLine
from popwatch.sources.tail import FileSource, GlobSource
from tests.deadline import readline_within

REPO = Path(__file__).resolve().parents[2]

LINES = (
    "2026-11-28T05:00:21.{n:06d}+00:00 mx sshd[23619]: Failed password for invalid user u{n} from 203.0.113.12 port 46396 ssh2",
    "2026-11-28T05:02:51.{n:06d}+00:00 mx dovecot: pop3-login: Disconnected: Connection closed (auth failed, 11 attempts in 152 secs): user=<u{n}>, method=LOGIN, rip=203.0.113.10, lip=192.0.2.1, session=<FMumDU9hssrLAHEK>",
)


def line(n: int) -> str:
    return LINES[n % 2].format(n=n)


class Writer(threading.Thread):
    """Appends ``total`` lines (bursts, then a short sleep) and rotates at chosen points.

    Records, for every line, the 1-based line number it has within the file it landed in.
    """

    def __init__(self, path: Path, total: int, every: int, rotate: Callable[[Writer, int], None]) -> None:
        super().__init__(daemon=True)
        self.path, self.total, self.every, self.rotate = path, total, every, rotate
        self.expected: dict[str, int] = {}
        self.lineno = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.f = open(path, "ab", buffering=0) if path.exists() else None  # noqa: SIM115 - closed in run()

    def put(self, n: int) -> None:
        self.f.write((line(n) + "\n").encode())
        self.lineno += 1
        self.expected[line(n)] = self.lineno

    def run(self) -> None:
        try:
            if self.f is None:  # the file appears only now, after the follower started
                self.f = open(self.path, "ab", buffering=0)  # noqa: SIM115
            for n in range(self.total):
                if self.stop.is_set():
                    return
                self.put(n)
                if n and n % self.every == 0:
                    self.rotate(self, n)
                if n % 500 == 0:
                    self.stop.wait(0.002)  # bursts of 500 lines: roughly 20-100k lines/s
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            if self.f is not None:
                self.f.close()


SENTINEL = "popwatch-test-sentinel"


async def sentinel(got: list[RawLine], path: Path, deadline: float) -> None:
    """A positive marker instead of "wait, then assert nothing more came": append a last line
    after everything and wait until the follower delivered it; anything it would read twice
    (a duplicate after a rotation) is read before it."""
    with open(path, "a") as f:
        f.write(f"{SENTINEL} {path.name}\n")
    loop = asyncio.get_running_loop()
    while not any(ln.text == f"{SENTINEL} {path.name}" for ln in got[-50:]):
        assert loop.time() < deadline + 10, f"the follower never delivered the sentinel of {path}"
        await asyncio.sleep(0.02)


async def follow_until(src: FileSource, writer: Writer, timeout: float = 60.0) -> list[RawLine]:
    """Run the source while the writer writes; stop when all lines arrived or at timeout."""
    got: list[RawLine] = []
    done = asyncio.Event()

    async def consume() -> None:
        async for batch in src.batches():
            got.extend(batch)
            if len(got) >= writer.total and not writer.is_alive():
                done.set()

    task = asyncio.create_task(consume())
    try:
        await asyncio.sleep(0.05)  # the follower is at the end of the (empty) file
        writer.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and not done.is_set():
            await asyncio.sleep(0.05)
            if len(got) >= writer.total and not writer.is_alive():
                break
        await sentinel(got, writer.path, deadline)
        return [ln for ln in got if not ln.text.startswith(SENTINEL)]
    finally:
        writer.stop.set()
        await src.aclose()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        writer.join(10)


def assert_exactly_once(got: list[RawLine], writer: Writer) -> None:
    assert writer.error is None, writer.error
    seen = Counter(ln.text for ln in got)
    dup = [t for t, c in seen.items() if c > 1]
    missing = [t for t in writer.expected if t not in seen]
    extra = [t for t in seen if t not in writer.expected]
    assert (len(missing), len(dup), len(extra)) == (0, 0, 0), (missing[:3], dup[:3], extra[:3])
    wrong = [(ln.text, ln.lineno, writer.expected[ln.text]) for ln in got
             if ln.lineno != writer.expected[ln.text]]
    assert wrong == []


async def test_rename_rotation_under_load(tmp_path) -> None:
    """logrotate ``create``: rename, create a new file, and the daemon keeps writing into the
    renamed file for a while (until its HUP) before it reopens the path."""
    p = tmp_path / "auth.log"
    p.touch()
    rotations = 0

    def rotate(w: Writer, n: int) -> None:
        nonlocal rotations
        rotations += 1
        for k in range(4, 0, -1):  # auth.log.3 -> .4, ... like logrotate's numbering
            if os.path.exists(f"{p}.{k}"):
                os.replace(f"{p}.{k}", f"{p}.{k + 1}")
        os.rename(p, f"{p}.1")
        p.touch()
        for m in range(200):  # before the HUP: more lines into the renamed file
            w.put(n * 1000 + m + 10_000_000)
        w.f.close()
        w.f = open(p, "ab", buffering=0)  # noqa: SIM115
        w.lineno = 0

    writer = Writer(p, total=40_000, every=4_000, rotate=rotate)
    src = FileSource(p, rotate_grace=2.0)
    got = await follow_until(src, writer)
    writer.total = len(writer.expected)
    assert rotations == 9
    assert_exactly_once(got, writer)
    assert src.followers[0].rotations == 9


async def test_delete_and_recreate_under_load(tmp_path) -> None:
    """The file is deleted while the daemon still writes to it, then created again."""
    p = tmp_path / "mail.log"
    p.touch()

    def rotate(w: Writer, n: int) -> None:
        os.unlink(p)
        for m in range(100):
            w.put(n * 1000 + m + 10_000_000)
        w.f.close()
        w.f = open(p, "ab", buffering=0)  # noqa: SIM115
        w.lineno = 0

    writer = Writer(p, total=20_000, every=5_000, rotate=rotate)
    src = FileSource(p, rotate_grace=2.0)
    got = await follow_until(src, writer)
    assert_exactly_once(got, writer)


async def test_file_that_appears_late_under_load(tmp_path) -> None:
    """The file does not exist when the follower starts; then it is created and filled fast."""
    p = tmp_path / "later" / "auth.log"
    p.parent.mkdir()
    writer = Writer(p, total=20_000, every=10**9, rotate=lambda w, n: None)
    src = FileSource(p)
    got = await follow_until(src, writer)
    assert_exactly_once(got, writer)


async def test_two_files_in_one_glob_under_load(tmp_path) -> None:
    """Two files flooded at once through one GlobSource: both complete, none starved."""
    a, b = tmp_path / "auth.log", tmp_path / "mail.log"
    a.touch()
    b.touch()
    wa = Writer(a, total=15_000, every=10**9, rotate=lambda w, n: None)
    wb = Writer(b, total=15_000, every=10**9, rotate=lambda w, n: None)
    src = GlobSource(str(tmp_path / "*.log"))
    got: list[RawLine] = []

    async def consume() -> None:
        async for batch in src.batches():
            got.extend(batch)

    task = asyncio.create_task(consume())
    try:
        await asyncio.sleep(0.1)
        wa.start()
        wb.start()
        for _ in range(600):  # at most 30 s
            if len(got) >= 30_000 and not wa.is_alive() and not wb.is_alive():
                break
            await asyncio.sleep(0.05)
        deadline = asyncio.get_running_loop().time()
        await sentinel(got, a, deadline)
        await sentinel(got, b, deadline)
        got[:] = [ln for ln in got if not ln.text.startswith(SENTINEL)]
    finally:
        wa.stop.set()
        wb.stop.set()
        await src.aclose()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        wa.join(10)
        wb.join(10)
    for path, w in ((a, wa), (b, wb)):
        assert_exactly_once([ln for ln in got if ln.source == str(path)], w)


async def test_copytruncate_under_load(tmp_path) -> None:
    """logrotate ``copytruncate``: copy the file, then truncate it in place.

    Real copytruncate loses the lines written between the copy and the truncation; nobody can
    read them. So the writer pauses around copy+truncate (it does the rotation itself), which is
    the precise guarantee: every line that was in the file at the copy or written after the
    truncation is seen exactly once, including lines written after the follower's last read
    and before the copy (salvaged from the copy). The writer also waits until the follower
    noticed one truncation before doing the next (logrotate runs hourly or daily, not twice
    before a follower wakes up), but keeps writing right after each truncation, so the file
    usually grows again before the follower looks.
    """
    p = tmp_path / "mail.log"
    p.touch()
    src = FileSource(p)

    def rotate(w: Writer, n: int) -> None:
        before = src.followers[0].truncations
        shutil.copyfile(p, f"{p}.1")
        os.truncate(p, 0)
        w.lineno = 0
        for m in range(300):  # regrow at once
            w.put(n * 1000 + m + 10_000_000)
        for _ in range(1000):  # bounded: 10 s
            if src.followers[0].truncations > before or w.stop.is_set():
                break
            w.stop.wait(0.01)

    writer = Writer(p, total=30_000, every=3_000, rotate=rotate)
    got = await follow_until(src, writer)
    assert_exactly_once(got, writer)
    assert src.followers[0].truncations == 9


CHILD = r"""
import asyncio, json, sys
from popwatch.sources.tail import FileSource, GlobSource

async def main(denied, ok):
    srcs = [FileSource(denied), FileSource(ok)]
    got = []
    async def run(s):
        async for b in s.batches():
            got.extend(ln.text for ln in b)
    tasks = [asyncio.create_task(run(s)) for s in srcs]
    loop = asyncio.get_running_loop()

    async def step(until):
        for _ in range(200):  # at most 10 s per step
            if until():
                break
            await asyncio.sleep(0.05)
        states = [s.health().state for s in srcs]
        print(json.dumps({"states": states, "got": got}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)

    states = lambda: [s.health().state for s in srcs]
    await step(lambda: states() == ["denied", "following"])
    await step(lambda: "ok-1" in got)
    await step(lambda: states()[0] == "following")
    await step(lambda: "denied-2" in got)
    for s in srcs:
        await s.aclose()
    for t in tasks:
        t.cancel()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


DROP = "-dac_override,-dac_read_search"


def _dropped(cmd: list[str]) -> list[str]:
    """As root: the same uid without the capabilities that bypass file permissions."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop root for this test"
    return [setpriv, f"--bounding-set={DROP}", f"--inh-caps={DROP}", *cmd]


def _readable_copy(repo: Path, d: str) -> str:
    """popwatch (and aiofiles, which the tail source imports) copied into ``d``: the child must
    not depend on reading the clone, which may sit in a home directory of mode 0700."""
    import aiofiles

    lib = os.path.join(d, "lib")
    shutil.copytree(repo / "popwatch", os.path.join(lib, "popwatch"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(aiofiles.__file__).parent, os.path.join(lib, "aiofiles"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for dirpath, dirnames, filenames in os.walk(lib):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return lib


@pytest.mark.parametrize("clone", ["repo", "home-0700"])
def test_permission_denied_is_reported_and_the_others_keep_running(clone: str) -> None:
    """Root reads every file, so as root the child drops the capabilities that bypass file
    permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) with setpriv: a mode-000 file is denied
    to it. It runs the base interpreter on a readable copy of the package, so it works when the
    clone (and its .venv) is in someone's 0700 home directory (``home-0700``: a copy of the
    package in a 0700 directory owned by nobody, which the child provably cannot read)."""
    d = tempfile.mkdtemp(prefix="popwatch-perm-")
    home = tempfile.mkdtemp(prefix="popwatch-home-")
    proc: subprocess.Popen[str] | None = None
    try:
        os.chmod(d, 0o755)
        repo = REPO
        if clone == "home-0700":
            repo = Path(home) / "clone"
            shutil.copytree(REPO / "popwatch", repo / "popwatch", ignore=shutil.ignore_patterns("__pycache__"))
            if os.geteuid() == 0:
                os.chown(home, 65534, 65534)
            os.chmod(home, 0o700)
            if os.geteuid() == 0:  # the setting is real: reading the clone directly fails
                # -S: no site-packages, so an editable install of the checkout (tests/run.py's
                # .venv) cannot answer the import in place of the 0700 copy
                r = subprocess.run(_dropped([sys.executable, "-S", "-c", "import popwatch.sources.tail"]),
                                   env=dict(os.environ, PYTHONPATH=str(repo)), cwd=d,
                                   capture_output=True, text=True, timeout=60, check=False)
                assert r.returncode != 0 and "popwatch" in r.stderr, r.stderr
        denied, ok = os.path.join(d, "denied.log"), os.path.join(d, "ok.log")
        with open(denied, "w") as f:
            f.write("denied-1\n")
        open(ok, "w").close()
        os.chmod(denied, 0o000)
        os.chmod(ok, 0o644)
        lib = _readable_copy(repo, d)
        python = getattr(sys, "_base_executable", sys.executable)  # not a venv in the clone
        cmd = _dropped([python, "-s", "-c", CHILD, denied, ok])
        env = dict(os.environ, PYTHONPATH=lib, PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=d)
        assert proc.stdin and proc.stdout

        def step() -> dict[str, list[str]]:
            assert proc and proc.stdout
            out = readline_within(proc.stdout, 60, "the unprivileged follower")
            assert out, proc.stderr.read() if proc.stderr else "child ended"
            return json.loads(out)

        def go() -> None:
            assert proc and proc.stdin
            proc.stdin.write("go\n")
            proc.stdin.flush()

        assert step() == {"states": ["denied", "following"], "got": []}
        with open(ok, "a") as f:
            f.write("ok-1\n")
        go()
        assert step() == {"states": ["denied", "following"], "got": ["ok-1"]}
        os.chmod(denied, 0o644)  # access granted: it existed at start, so follow from its end
        go()
        assert step() == {"states": ["following", "following"], "got": ["ok-1"]}
        with open(denied, "a") as f:
            f.write("denied-2\n")
        go()
        assert step() == {"states": ["following", "following"], "got": ["ok-1", "denied-2"]}
        go()
        assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
