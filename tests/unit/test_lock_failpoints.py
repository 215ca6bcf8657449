"""facesearch.util.lock (single-writer locks naming their holder) and facesearch.util.failpoints."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from facesearch.errors import PreconditionError, Reason
from facesearch.util import failpoints
from facesearch.util.lock import FileLock, LockHeldError, hold, holder_pid
from indexer.publish import locked

REPO = Path(__file__).resolve().parents[2]

_HOLDER = """
import sys, time
from facesearch.util.lock import FileLock
FileLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(LockHeldError) as err:
            FileLock(path).acquire()
        assert err.value.holder_pid == proc.pid and f"pid {proc.pid}" in str(err.value)
        assert holder_pid(path) == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: the kernel drops the lock
        proc.wait(10)
    with hold(path) as lock:
        assert lock.held and holder_pid(path) == os.getpid()
        with pytest.raises(LockHeldError):  # one process, two opens: excluded too
            FileLock(path).acquire()
    assert holder_pid(path) is None  # a clean release leaves no pid behind


def test_the_indexer_lock_is_the_same_lock(tmp_path: Path) -> None:
    with locked(tmp_path), pytest.raises(LockHeldError):
        FileLock(tmp_path / ".lock").acquire()
    with FileLock(tmp_path / ".lock"), pytest.raises(PreconditionError) as refused, locked(tmp_path):
        pass
    assert refused.value.reason == Reason.LOCK_HELD and f"pid {os.getpid()}" in refused.value.message


def test_failpoints_parse_skip_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    assert failpoints.parse("journal.fsync:eio*2+1, journal.append:torn") == {
        "journal.fsync": failpoints.Failpoint("journal.fsync", "eio", 2, 1),
        "journal.append": failpoints.Failpoint("journal.append", "torn", None, 0),
    }
    for bad in ("journal.fsync", "journal.fsync:boom", "journal.fsync:eio*x", ":eio", "journal.fsnyc:eio"):
        with pytest.raises(failpoints.FailpointSpecError):
            failpoints.parse(bad)
    assert failpoints.hit("journal.fsync") is None  # nothing set: nothing happens
    monkeypatch.setenv(failpoints.ENV, "journal.fsync:enospc*2+1")
    outcomes = []
    for _ in range(5):
        try:
            outcomes.append(failpoints.hit("journal.fsync"))
        except OSError as err:
            outcomes.append(errno.errorcode[err.errno or 0])
    assert outcomes == [None, "ENOSPC", "ENOSPC", None, None]
    monkeypatch.delenv(failpoints.ENV)
    with failpoints.active("journal.append:torn*1"):
        assert [failpoints.hit("journal.append"), failpoints.hit("journal.append")] == ["torn", None]
    assert failpoints.hit("journal.append") is None


@pytest.mark.parametrize("action", ["kill", "crash"])
def test_the_kill_failpoint_is_a_crash(action: str) -> None:
    code = "from facesearch.util import failpoints; failpoints.hit('journal.commit'); print('survived')"
    env = {**os.environ, failpoints.ENV: f"journal.commit:{action}"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL and "survived" not in done.stdout


# failpoints.hit, and the PostgreSQL store's inject (facesearch.store.postgres.failures: hit, then the
# injected errno raised as a broken connection)
_HIT = re.compile(r"(?:failpoints\.hit|\binject)\(\s*([^),]*)[,)]")


def test_every_site_called_in_the_code_is_declared_and_every_declared_site_is_called() -> None:
    """The crash-point test enumerates ``failpoints.SITES``: a site called but not declared would go
    untested, a site declared but never called would make that test fail to crash."""
    called: set[str] = set()
    for package in ("facesearch", "server", "indexer"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name == "failpoints.py":
                continue
            for arg in _HIT.findall(path.read_text()):
                literal = re.fullmatch(r'"([a-z_.]+)"', arg.strip())
                if literal is None:  # only fs.py (AtomicSites) and failures.inject pass a name they were given
                    assert path.name in ("fs.py", "failures.py"), f"{path}: failpoints.hit({arg}) must name its site"
                    continue
                called.add(literal.group(1))
    atomic = {n for g in (failpoints.CURRENT_SWITCH,) for n in (g.fsync, g.rename, g.renamed)}
    assert called | atomic == set(failpoints.SITES)
    for site in failpoints.SITES.values():
        assert site.operations, site.name
