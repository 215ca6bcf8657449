"""facesearch.util.lock (single-writer locks naming their holder) and facesearch.util.failpoints."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from facesearch.errors import PreconditionError, Reason
from facesearch.util import failpoints
from facesearch.util.lock import FileLock, LockHeldError, hold, holder_pid
from indexer.publish import locked

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
    assert failpoints.parse("a.b:eio*2+1, c:torn") == {
        "a.b": failpoints.Failpoint("a.b", "eio", 2, 1),
        "c": failpoints.Failpoint("c", "torn", None, 0),
    }
    for bad in ("a.b", "a.b:boom", "a.b:eio*x", ":eio"):
        with pytest.raises(failpoints.FailpointSpecError):
            failpoints.parse(bad)
    assert failpoints.hit("site.x") is None  # nothing set: nothing happens
    monkeypatch.setenv(failpoints.ENV, "site.x:enospc*2+1")
    outcomes = []
    for _ in range(5):
        try:
            outcomes.append(failpoints.hit("site.x"))
        except OSError as err:
            outcomes.append(errno.errorcode[err.errno or 0])
    assert outcomes == [None, "ENOSPC", "ENOSPC", None, None]
    monkeypatch.delenv(failpoints.ENV)
    with failpoints.active("site.y:torn*1"):
        assert [failpoints.hit("site.y"), failpoints.hit("site.y")] == ["torn", None]
    assert failpoints.hit("site.y") is None


def test_the_kill_failpoint_is_a_crash() -> None:
    code = "from facesearch.util import failpoints; failpoints.hit('x'); print('survived')"
    env = {**os.environ, failpoints.ENV: "x:kill"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL and "survived" not in done.stdout
