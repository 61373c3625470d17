"""The server's side of the constraint compile check: one long-lived child process
(`python -m app.structured_check`) per ConstraintCompiler, killed when a check runs past
its time limit (app/structured_check.py says why only a kill can stop a compile).

The child builds llguidance's tokenizer once, at its start, and then answers checks one
at a time, one JSON line each way, so a new constraint costs its compile only, not a
process start, imports and a tokenizer build. The child is started on the first check.

- Time limit: a check's `limit_s` counts from its call, so the wait for the child (another
  check in progress) counts against it as well as the compile; the start of a fresh child
  (imports and tokenizer build, bounded by STARTUP_LIMIT_S apart) does not, as it is no
  property of the constraint.
- Timeout: the child is killed (CheckTimeout) and a fresh one started at once, so it loads
  while nothing waits for it.
- Crash (an llguidance panic, a kill from outside): the check in progress gets CheckFailed
  naming the exit status and the end of the child's stderr; a fresh child is started. A
  child found dead between checks is replaced before the check, which does not fail.
- Concurrency: checks take turns on the one child (a lock); at most `max_pending` wait or
  run at once, more are refused with QueueFull (429: retry later) rather than queued.
- Shutdown: `close()` ends the child (closing its stdin ends its loop; killed if it does
  not end at once); a compiler dropped without close() has its child killed when it is
  collected or the interpreter exits (weakref.finalize). A child whose server died ends
  too: its stdin closes.

Checks run in worker threads (blocking calls: select on the child's stdout with the
deadline), never on the event loop. The child is started with subprocess (fork + exec at
once, never a bare fork of this threaded, torch-loaded process).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from app.engine.errors import EngineStopped, QueueFull
from app.structured_check import CheckFailed, CheckRequest, CheckTimeout, TokenizerSpec

STARTUP_LIMIT_S = 60.0  # imports + llguidance's tokenizer build (seconds for 150k tokens)
MAX_PENDING = 32  # checks waiting or running at once, per checker
STOP_GRACE_S = 2.0  # after stdin closes, before the child is killed


class CheckerBroken(RuntimeError):
    """The child could not start (a server fault, not the constraint's: a 500)."""


class _ChildExited(Exception):
    """The child's stdout closed: it exited (crashed, or was killed)."""


def _stop(process: subprocess.Popen[bytes], stderr: IO[bytes], grace_s: float) -> None:
    """End `process` (after `grace_s` seconds for it to end on its own) and reap it."""
    if process.stdin is not None:
        with contextlib.suppress(OSError):  # broken pipe: it is gone already
            process.stdin.close()  # the child's loop ends at EOF
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()
    stderr.close()


class _Child:
    """One running `python -m app.structured_check` and the bytes read from it so far."""

    def __init__(self, owner: CompileChecker, tokenizer_file: Path) -> None:
        # The child imports this very `app` package, wherever the server found it.
        package_root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
        # A file, not a pipe: a child that writes much to stderr can never block on it.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by _stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.structured_check", str(tokenizer_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            env={**os.environ, "PYTHONPATH": path})
        self.ready = False  # it said it has built its tokenizer
        self._buffer = bytearray()
        # Killed (no grace) if the checker is collected without close().
        self._finalizer = weakref.finalize(owner, _stop, self.process, self.stderr, 0.0)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, message: CheckRequest) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):  # ValueError: its stdin was closed
            raise _ChildExited from None

    def receive(self, deadline: float) -> dict[str, Any] | None:
        """The child's next JSON line; None if none came by `deadline` (monotonic)."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise _ChildExited
            self._buffer += chunk
        end = self._buffer.index(b"\n")
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self, grace_s: float) -> None:
        self._finalizer.detach()
        _stop(self.process, self.stderr, grace_s)

    def exit_report(self) -> str:
        """How it ended: the exit status and the end of its stderr (once it has exited)."""
        try:
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:  # stdout closed, yet not exited: ended here
            self.process.kill()
            self.process.wait()
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace").strip()[-300:]
        return f"the constraint compiler exited with {self.process.returncode}" + (
            f": {tail}" if tail else "")


class CompileChecker:
    """Checks constraints in one long-lived child process, each within a time limit.
    Thread-safe. `tokenizer` is called once, by the first check, for the tokenizer the
    child builds."""

    def __init__(self, tokenizer: Callable[[], TokenizerSpec],
                 max_pending: int = MAX_PENDING) -> None:
        self._tokenizer = tokenizer
        self._max_pending = max_pending
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._turn = threading.Lock()  # held by the one check talking to the child
        self._child: _Child | None = None
        self._tokenizer_file: Path | None = None
        self._remove_tokenizer_file: Callable[[], object] = lambda: None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before the first check and after close)."""
        child = self._child
        return child.pid if child is not None else None

    def check(self, request: CheckRequest, limit_s: float) -> str:
        """`request`'s checked grammar, answered within `limit_s` seconds of this call;
        CheckTimeout, CheckFailed (invalid, or the child crashed on it), QueueFull (too
        many checks pending) or EngineStopped (closed) otherwise."""
        deadline = time.monotonic() + limit_s
        with self._pending_lock:
            if self._pending >= self._max_pending:
                raise QueueFull(f"{self._pending} structured-output constraints are already "
                                "compiling; retry later")
            self._pending += 1
        try:
            if not self._turn.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise CheckTimeout
            try:
                return self._check(request, deadline)
            finally:
                self._turn.release()
        finally:
            with self._pending_lock:
                self._pending -= 1

    def close(self) -> None:
        """Stop the child; later checks raise EngineStopped. A check in progress is ended
        (its child killed: it gets EngineStopped), not waited for."""
        self._closed = True
        if not self._turn.acquire(blocking=False):
            child = self._child
            if child is not None:
                child.process.kill()  # the check reading from it sees it exit
            self._turn.acquire()
        try:
            if self._child is not None:
                self._child.stop(STOP_GRACE_S)
                self._child = None
            if self._tokenizer_file is not None:
                self._remove_tokenizer_file()
                self._tokenizer_file = None
        finally:
            self._turn.release()

    def _check(self, request: CheckRequest, deadline: float) -> str:
        child, loading_s = self._ready_child()
        deadline += loading_s  # loading a fresh child is not the constraint's time
        try:
            child.send(request)
            answer = child.receive(deadline)
        except _ChildExited:
            self._child = None
            report = child.exit_report()
            child.stop(0.0)
            if self._closed:
                raise EngineStopped("the server is shutting down") from None
            self._restart()
            raise CheckFailed(f"{report} while compiling this constraint") from None
        if answer is None:
            # The compile cannot be stopped otherwise; its answer must never reach the
            # next check either.
            self._child = None
            child.stop(0.0)
            self._restart()
            raise CheckTimeout
        if "error" in answer:
            raise CheckFailed(str(answer["error"]))
        return str(answer["grammar"])

    def _ready_child(self) -> tuple[_Child, float]:
        """The child, started if there is none (or it died), once it has loaded; and the
        seconds this call waited for it to load."""
        if self._closed:
            raise EngineStopped("the server is shutting down")
        child = self._child
        if child is not None and not child.alive():
            child.stop(0.0)  # died between checks: no check's fault, replaced silently
            child = None
        if child is None:
            child = self._start()
        if child.ready:
            return child, 0.0
        started = time.monotonic()
        try:
            hello = child.receive(started + STARTUP_LIMIT_S)
        except _ChildExited:
            hello = None
        if hello is None or not hello.get("ready"):
            self._child = None
            if self._closed:  # close() ended it while it loaded
                child.stop(0.0)
                raise EngineStopped("the server is shutting down")
            report = child.exit_report() if not child.alive() else (
                f"the constraint compiler did not start within {STARTUP_LIMIT_S:g} s")
            child.stop(0.0)
            raise CheckerBroken(report)
        child.ready = True
        return child, time.monotonic() - started

    def _start(self) -> _Child:
        if self._tokenizer_file is None:
            # The tokenizer goes to the child as a file: several MB for a large vocabulary,
            # read once by each child, without the parent blocking on a pipe meanwhile.
            with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="llm-checker-",
                                             delete=False) as file:
                json.dump(self._tokenizer(), file)
            self._tokenizer_file = Path(file.name)
            # Removed by close(), or when the checker is collected without it.
            self._remove_tokenizer_file = weakref.finalize(
                self, self._tokenizer_file.unlink, missing_ok=True)
        self._child = _Child(self, self._tokenizer_file)
        return self._child

    def _restart(self) -> None:
        """A fresh child for the next check, loading while nothing waits for it."""
        if not self._closed:
            self._start()
