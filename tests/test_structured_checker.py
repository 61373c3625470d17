"""The compile check's long-lived child process (app/structured_checker.py): reused across
checks, replaced after a timeout or a crash, shared by concurrent checks with a bounded
queue, stopped by close()."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.engine.errors import EngineStopped, QueueFull
from app.structured import (
    ConstraintCompiler,
    ConstraintSpec,
    ConstraintTooSlow,
    InvalidConstraint,
)
from app.tokenizer import Tokenizer
from tests.waiting import wait_until

DEFAULT_LM = Path(__file__).resolve().parents[1] / "models" / "default-lm"
# Thousands of optional properties: seconds to compile (the cost grows with the square of
# their number), so a check of it is still running when the test acts on it.
SLOW_SCHEMA = json.dumps({"type": "object",
                          "properties": {f"p{i}": {"type": "integer"} for i in range(8000)}})


def small(i: int) -> ConstraintSpec:
    """A small JSON Schema, different for every `i` (never a cache hit)."""
    return ConstraintSpec("json_schema", json.dumps({
        "type": "object", "properties": {f"k{i}": {"type": "integer"}},
        "required": [f"k{i}"]}), "guided_json")


def slow() -> ConstraintSpec:
    return ConstraintSpec("json_schema", SLOW_SCHEMA, "guided_json")


def state(pid: int) -> str | None:
    """The process's state letter (R running, S sleeping, Z zombie, ...); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def cpu_ticks(pid: int) -> int:
    """The CPU time the process has used, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_for_work(pid: int) -> None:
    """Until the child has spent a tenth of a second on CPU since this call: at work on
    the slow schema (a small one takes it a millisecond; an idle child sleeps)."""
    start = cpu_ticks(pid)
    ticks = os.sysconf("SC_CLK_TCK")
    wait_until(lambda: cpu_ticks(pid) - start >= ticks // 10, "the child to compile")


def checker_children() -> list[int]:
    """This process's children running app.structured_check (zombies included)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and (b"app.structured_check" in cmdline or state(
                int(proc.name)) == "Z"):
            found.append(int(proc.name))
    return found


def make(limit_s: float = 30.0, max_pending: int = 32) -> ConstraintCompiler:
    return ConstraintCompiler(Tokenizer.from_dir(DEFAULT_LM), 8192, limit_s=limit_s,
                              max_pending=max_pending)


@pytest.fixture
def compiler() -> Iterator[ConstraintCompiler]:
    compiler = make()
    yield compiler
    compiler.close()


def test_one_child_answers_every_check(compiler: ConstraintCompiler) -> None:
    assert compiler.checker_pid is None  # started by the first new constraint
    compiler.compile(small(0))
    pid = compiler.checker_pid
    assert pid is not None and state(pid) in ("S", "R")
    for i in range(1, 6):
        compiler.compile(small(i))
        assert compiler.checker_pid == pid
    # An invalid constraint is the constraint's failure, not the child's: it stays.
    with pytest.raises(InvalidConstraint):
        compiler.compile(ConstraintSpec("regex", "[a-", "guided_regex"))
    assert compiler.checker_pid == pid


def test_after_a_timeout_the_next_new_constraint_compiles_in_a_fresh_child() -> None:
    compiler = make(limit_s=0.5)
    try:
        compiler.compile(small(0))
        killed = compiler.checker_pid
        assert killed is not None
        with pytest.raises(ConstraintTooSlow):
            compiler.compile(slow())
        assert state(killed) is None  # killed and reaped: no compile left running
        fresh = compiler.checker_pid
        assert fresh is not None and fresh != killed  # started at once, for the next
        compiler.compile(small(1))
        assert compiler.checker_pid == fresh
    finally:
        compiler.close()


def test_a_child_that_crashes_mid_compile_is_restarted(compiler: ConstraintCompiler) -> None:
    compiler.compile(small(0))
    crashed = compiler.checker_pid
    assert crashed is not None
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(compiler.compile, slow())
        wait_for_work(crashed)
        os.kill(crashed, signal.SIGKILL)  # as an llguidance panic would end it
        with pytest.raises(InvalidConstraint, match="constraint compiler exited with -9"):
            pending.result(timeout=20)  # far less than the 30 s limit: no hang
    assert state(crashed) is None
    compiler.compile(small(1))
    assert compiler.checker_pid not in (None, crashed)


def test_a_child_that_died_between_checks_is_replaced_without_an_error(
        compiler: ConstraintCompiler) -> None:
    compiler.compile(small(0))
    dead = compiler.checker_pid
    assert dead is not None
    os.kill(dead, signal.SIGKILL)
    wait_until(lambda: state(dead) == "Z", "the child to die")
    compiler.compile(small(1))  # no error: it was no check's fault
    assert compiler.checker_pid not in (None, dead) and state(dead) is None


def test_concurrent_new_constraints_all_compile_in_the_one_child(
        compiler: ConstraintCompiler) -> None:
    compiler.compile(small(0))
    pid = compiler.checker_pid
    specs = [small(i) for i in range(1, 17)]
    with ThreadPoolExecutor(8) as pool:
        compiled = list(pool.map(compiler.compile, specs))
    assert [c.spec for c in compiled] == specs
    assert compiler.checker_pid == pid
    assert compiler.cached() == 17


def test_checks_beyond_the_bound_are_refused_not_queued() -> None:
    compiler = make(max_pending=1)
    try:
        compiler.compile(small(0))
        busy = compiler.checker_pid
        assert busy is not None
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(compiler.compile, slow())
            wait_for_work(busy)
            with pytest.raises(QueueFull, match="already compiling"):
                compiler.compile(small(1))
            # close() ends the check in progress: it does not wait for its compile.
            compiler.close()
            with pytest.raises(EngineStopped):
                pending.result(timeout=20)
    finally:
        compiler.close()
    assert state(busy) is None


def test_close_stops_the_child(compiler: ConstraintCompiler) -> None:
    compiled = compiler.compile(small(0))
    pid = compiler.checker_pid
    assert pid is not None
    compiler.close()
    assert state(pid) is None and compiler.checker_pid is None
    assert pid not in checker_children()
    with pytest.raises(EngineStopped):
        compiler.compile(small(1))
    assert compiler.compile(small(0)).template is compiled.template  # cached: no check
