"""`make image-test`: the built image, started as its own CMD would start it, must serve.

Runs the image through buildah (`buildah run --isolation chroot`: no daemon; the process
shares the host's network, so the server answers on a free port of the host's loopback),
as the image's non-root USER, with the image's directories read-only and /tmp writable,
and checks: /readyz, /v1/generate, /v1/classify, /metrics, /v1/info's compile state (compiled,
or eager with its reason in the log), the HEALTHCHECK command, SIGTERM draining an
in-flight stream to its end and an exit 0; then a second start with `--quantization int8`
and no compiler on the PATH, whose kernels must be the image's prebuilt ones.

Usage: python -m tests.image.check_image IMAGE. Exit 0, or 1 with what failed and the
server's log. Every container it creates is removed, whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.live import free_port

READY_TIMEOUT = 600  # compiling and warming up both models, 2 cores: about a minute
LOG_DIR = Path(os.environ.get("TMPDIR", "/tmp"))
# What buildah prints when it fails before the image's process runs, a transient fault of
# the host: buildah re-executes itself from a sealed memfd copy of its binary
# (containers/storage's unshare), and sealing it got EBUSY once in CI.
RUNTIME_FLAKE = "Close_Fd sealing memfd copy"
# Left writable (/tmp), or the runner's own (/run, /dev, /proc, /sys).
WRITABLE = {"tmp", "run", "dev", "proc", "sys"}


class CheckFailed(Exception):
    """One check did not hold; its message says which and what was seen."""


def buildah(*args: str) -> str:
    run = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        raise CheckFailed(f"buildah {' '.join(args)}: {run.stderr.strip()}")
    return run.stdout.strip()


def image_config(image: str) -> dict[str, Any]:
    """The image's Docker config (Cmd, User, Env, Healthcheck): the run follows it."""
    config: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", image))["Docker"][
        "config"]
    return config


class Container:
    """One working container of IMAGE. `buildah run` has no --read-only, and a read-only
    overlay breaks its own clean-up, so every top-level directory of the image is
    bind-mounted read-only over itself instead: what the server sees is what
    `docker run --read-only --tmpfs /tmp` gives it (/tmp writable, nothing else)."""

    def __init__(self, image: str, name: str) -> None:
        self.name = buildah("from", "--pull=never", "--name", name, image)
        self.root = buildah("mount", self.name)
        self.read_only = [f"/{d.name}" for d in sorted(Path(self.root).iterdir())
                          if d.is_dir() and not d.is_symlink() and d.name not in WRITABLE]

    def command(self, argv: list[str], user: str, env: dict[str, str]) -> list[str]:
        flags = ["--isolation", "chroot", "--user", user,
                 "--mount", "type=tmpfs,destination=/tmp,tmpfs-mode=1777"]
        for path in self.read_only:
            flags += ["--mount", f"type=bind,source={self.root}{path},destination={path},ro"]
        for key, value in env.items():
            flags += ["--env", f"{key}={value}"]
        return ["buildah", "run", *flags, self.name, "--", *argv]

    def remove(self) -> None:
        subprocess.run(["buildah", "rm", self.name], capture_output=True, timeout=120)


class Server:
    """The image's CMD (plus EXTRA arguments) running in a Container."""

    def __init__(self, container: Container, config: dict[str, Any], extra: list[str],
                 env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"LLM_HOST": "127.0.0.1", "LLM_PORT": str(self.port), **env}
        self.log_path = LOG_DIR / f"image-test-{self.port}.log"
        self.user = str(config["User"])
        self.argv = container.command([*config["Cmd"], *extra], self.user, self.env)
        self.proc = self._launch()

    def _launch(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("w") as log:
            return subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def wait_ready(self) -> float:
        started = time.monotonic()
        relaunched = False
        while time.monotonic() - started < READY_TIMEOUT:
            if self.proc.poll() is not None:
                if not relaunched and RUNTIME_FLAKE in self.log():
                    # The server never started, so starting it again tests the same thing.
                    print(f"  buildah run failed to start ({RUNTIME_FLAKE!r}): once more")
                    relaunched = True
                    self.proc = self._launch()
                    continue
                raise CheckFailed(f"the server exited with {self.proc.returncode} before "
                                  "/readyz answered 200")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise CheckFailed(f"/readyz not 200 after {READY_TIMEOUT} s")

    def server_pid(self) -> int:
        """The server's process: `buildah run` does not pass SIGTERM on (it kills its
        child), so the signal goes where a runtime sends it, to the container's first
        process, found as the first descendant of `buildah run` that is not buildah's."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        queue = list(children.get(self.proc.pid, []))
        while queue:
            pid = queue.pop(0)
            try:
                argv0 = (Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]).decode()
            except OSError:
                continue
            if not Path(argv0).name.startswith("buildah"):
                return pid
            queue += children.get(pid, [])
        raise CheckFailed("the server's process was not found under buildah run")

    def stop(self) -> int:
        """SIGTERM to the server, then its exit status (which buildah run passes on);
        killed after the drain timeout and a margin."""
        if self.proc.poll() is None:
            os.kill(self.server_pid(), signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise CheckFailed("the server did not exit within 60 s of SIGTERM") from None
        return int(self.proc.returncode)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def check_serving(server: Server) -> None:
    generated = httpx.post(server.url + "/v1/generate", timeout=60, json={
        "prompt": "The best thing about computers is", "max_tokens": 16, "temperature": 0})
    expect(generated.status_code == 200, f"/v1/generate: {generated.status_code} "
                                         f"{generated.text[:300]}")
    body = generated.json()
    expect(body["model"] == "default-lm" and body["usage"]["completion_tokens"] > 0,
           f"/v1/generate answered no tokens: {body}")
    classified = httpx.post(server.url + "/v1/classify", timeout=60, json={
        "text": "My program segfaults whenever the compiler optimizes it.", "top_k": 3})
    expect(classified.status_code == 200, f"/v1/classify: {classified.status_code} "
                                          f"{classified.text[:300]}")
    expect(classified.json()["label"] == "computers",
           f"/v1/classify: the shipped classifier got {classified.json()['label']!r}, "
           "expected 'computers'")
    metrics = httpx.get(server.url + "/metrics", timeout=10)
    expect(metrics.status_code == 200 and
           'llm_generation_tokens_total{model="default-lm"}' in metrics.text,
           "/metrics has no llm_generation_tokens_total for default-lm")


def model_info(server: Server) -> dict[str, dict[str, Any]]:
    info = httpx.get(server.url + "/v1/info", timeout=10).json()
    return {m["name"]: m for m in info["models"]}


def check_healthcheck(container: Container, config: dict[str, Any], server: Server) -> None:
    """The image's HEALTHCHECK command, run in the container as a runtime would."""
    test = config.get("Healthcheck", {}).get("Test") or []
    expect(test[:1] == ["CMD"], f"the image has no exec-form HEALTHCHECK (got {test})")
    run = subprocess.run(container.command(test[1:], server.user, server.env),
                         capture_output=True, text=True, timeout=60)
    expect(run.returncode == 0, f"HEALTHCHECK exited {run.returncode}: {run.stderr[-1000:]}")


def check_read_only(container: Container) -> None:
    """Even root, in the same mounts, writes nothing outside /tmp: the image's directories
    are read-only mounts, not merely another user's."""
    script = "; ".join(f"touch {d}/.image-test 2>&1" for d in container.read_only)
    probe = subprocess.run(
        container.command(["sh", "-c", f"{script}; touch /tmp/.image-test && echo tmp-ok"],
                          "0:0", {}), capture_output=True, text=True, timeout=60)
    refused = probe.stdout.count("Read-only file system")
    expect(refused == len(container.read_only) and "tmp-ok" in probe.stdout,
           f"expected {container.read_only} read-only and /tmp writable: {probe.stdout}")


def check_drain(server: Server) -> None:
    """SIGTERM while a stream runs: the stream still ends with its last event and [DONE],
    and the server exits 0."""
    events: list[str] = []
    first = threading.Event()
    failure: list[BaseException] = []

    def stream() -> None:
        try:
            with httpx.stream("POST", server.url + "/v1/generate", timeout=120, json={
                    "prompt": "Love is", "max_tokens": 200, "temperature": 0,
                    "ignore_eos": True, "stream": True}) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        first.set()
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
            first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    expect(first.wait(60), "the stream sent no event within 60 s")
    status = server.stop()
    reader.join(120)
    expect(not failure, f"the stream broke during the drain: {failure[:1]}")
    expect(events[-1:] == ["[DONE]"], f"the stream did not end with [DONE]: {events[-3:]}")
    finishes = [json.loads(e).get("finish_reason") for e in events[:-1]]
    expect("length" in finishes, f"the stream ended without finish_reason 'length': "
                                 f"{events[-3:]}")
    expect(status == 0, f"the server exited {status} after draining, expected 0")
    expect("draining" in server.log(100_000), "the log does not say it was draining")


class Servers:
    """The servers one check starts in its container: on a failed check their log is shown,
    and whatever the outcome they are killed and the container removed."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self.started: list[Server] = []

    def start(self, server: Server) -> Server:
        self.started.append(server)
        return server

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if kind is not None and issubclass(kind, CheckFailed):
                for server in self.started:
                    print(f"--- server log ({server.log_path}) ---\n{server.log()}",
                          file=sys.stderr)
        finally:
            for server in self.started:
                if server.proc.poll() is None:
                    server.proc.kill()
                    server.proc.wait()
            self.container.remove()


def run_default(image: str, config: dict[str, Any]) -> None:
    """The image's CMD as it is: --compile auto, both shipped models."""
    container = Container(image, f"llm-image-test-{os.getpid()}")
    with Servers(container) as servers:
        server = servers.start(Server(container, config, [], {}))
        print(f"  ready in {server.wait_ready():.0f} s (CMD {config['Cmd']}, "
              f"user {server.user})")
        check_serving(server)
        print("  /v1/generate, /v1/classify, /metrics: ok")
        check_read_only(container)
        print(f"  read-only: {' '.join(container.read_only)}; /tmp writable")
        compile_state = model_info(server)["default-lm"]["compile"]
        expect(bool(compile_state), "/v1/info names no compile state")
        expect("compile:" in server.log(100_000), "the log has no compile line")
        print(f"  --compile auto: {compile_state}")
        check_healthcheck(container, config, server)
        print("  HEALTHCHECK: ok")
        check_drain(server)
        print("  SIGTERM during a stream: drained to [DONE], exit 0")


def run_quantized(image: str, config: dict[str, Any]) -> None:
    """`--quantization int8` with no compiler reachable (PATH without /usr/bin): the
    kernels built into the image load as they are, and --compile auto says why it is off."""
    container = Container(image, f"llm-image-test-q-{os.getpid()}")
    with Servers(container) as servers:
        server = servers.start(Server(container, config, ["--quantization", "int8"],
                                      {"PATH": "/opt/venv/bin", "CXX": "/nonexistent/c++"}))
        print(f"  ready in {server.wait_ready():.0f} s (--quantization int8, no compiler)")
        check_serving(server)
        lm = model_info(server)["default-lm"]
        expect(" cpp " in lm["quantization"] or " idot " in lm["quantization"],
               f"int8 runs none of the C++ kernels: {lm['quantization']}")
        # Which build the server loaded: the same call, in the same container and env.
        probe = subprocess.run(container.command(
            ["python", "-c", "from app.kernels.build import quant_extension; "
                             "print(quant_extension()[1])"], server.user, server.env),
            capture_output=True, text=True, timeout=120)
        expect("(prebuilt)" in probe.stdout,
               f"the int8 kernels are not the image's prebuilt ones: {probe.stdout.strip()} "
               f"{probe.stderr[-500:]}")
        print(f"  int8: {probe.stdout.strip()}, chosen per shape: "
              f"{lm['quantization'].split(';')[0]}")
        print(f"  --compile auto without a compiler: {lm['compile']}")
        expect(server.stop() == 0, "the quantized server did not exit 0 on SIGTERM")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.image.check_image IMAGE", file=sys.stderr)
        return 2
    image = argv[0]
    started = time.monotonic()
    try:
        config = image_config(image)
        print(f"{image}: the image's CMD")
        run_default(image, config)
        print(f"{image}: quantized")
        run_quantized(image, config)
    except (CheckFailed, subprocess.SubprocessError, httpx.HTTPError, OSError) as exc:
        print(f"image-test FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"image-test passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
