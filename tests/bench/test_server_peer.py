"""bench.server_peer's harness against our own real server (no llama-server needed), and
bench/build_llama_server.sh's AMX fallback with cmake and llama-server stood in for."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench import server_peer
from bench.llama_server_probe import FAILED, OK, SIGILL, classify, probe_models
from tests.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]


def test_concurrent_requests_through_our_server() -> None:
    """Two concurrent requests of 6 tokens, EOS ignored: the aggregate counts every
    generated token over the wall time, the per-request figure is a latency per token."""
    with LiveServer("--model", f"default-lm={server_peer.DEFAULT_LM}", "--threads", "1",
                    ready_timeout=120) as live:
        send = server_peer.ours_send(live.url, "default-lm")
        out = asyncio.run(server_peer.measure(send, (2,), 2, 8192, new=6, idle_timeout=0,
                                              server_pid=live.proc.pid))

        async def short() -> dict[str, float]:
            async with httpx.AsyncClient(timeout=60) as client:
                return await server_peer.concurrent(client, send, [[5, 6, 7]], 6)

        single = asyncio.run(short())
    assert set(out) == {2}
    rounds = out[2]["rounds"]
    assert len(rounds) == 2
    for r in rounds:
        # 12 tokens in the round's wall time; each request took at least 1/6 of the wall.
        assert r["tok_s"] == pytest.approx(12 / r["wall_s"])
        assert r["ms_per_token"] <= 1000 * r["wall_s"] / 6 * 1.001
        assert r["ms_per_token"] >= 1000 * r["wall_s"] / 6 / 2
        assert 0 <= r["others_busy_during_pct"] <= 100
    assert single["tok_s"] == pytest.approx(6 / single["wall_s"])


def test_fewer_tokens_than_asked_is_an_error() -> None:
    """A server that stopped early (EOS not ignored) must not yield a figure."""
    async def stops_early(client: httpx.AsyncClient, prompt: list[int], new: int) -> int:
        return new - 1

    async def run() -> None:
        async with httpx.AsyncClient() as client:
            await server_peer.concurrent(client, stops_early, [[1], [2]], 4)

    with pytest.raises(RuntimeError, match="asked for 4 tokens"):
        asyncio.run(run())


def test_prompts_fresh_per_round_and_same_for_both_servers() -> None:
    a, b = server_peer.prompts_for(8, 0, 32000), server_peer.prompts_for(8, 1, 32000)
    assert a == server_peer.prompts_for(8, 0, 32000)
    assert len(a) == 8 and all(len(p) == server_peer.PROMPT for p in a)
    assert not {tuple(p) for p in a} & {tuple(p) for p in b}
    assert all(10 <= t < 256 for p in server_peer.prompts_for(2, 0, 256) for t in p)


def test_verdicts_and_rows() -> None:
    ours = {1: {"tok_s": 90.0}, 8: {"tok_s": 300.0}, 32: {"tok_s": 600.0}}
    theirs = {1: {"tok_s": 100.0}, 8: {"tok_s": 200.0}, 32: {"tok_s": 200.0}}
    v = server_peer.verdicts(ours, theirs)
    assert v[1] == {"ratio": 0.9, "target": 1.0, "met": False}
    assert v[8]["met"] and v[32] == {"ratio": 3.0, "target": 3.0, "met": True}
    figures = {"tok_s": 1.0, "ms_per_token": 2.0, "rounds": [{"others_busy_pct": 10.0,
                                                                "others_busy_during_pct": 40.0}]}
    printed = server_peer.table([{
        "row": {"model": "m", "label": "bf16", "gguf": "bf16"}, "verdicts": v,
        "ours": {level: figures for level in v}, "llama.cpp": {level: figures for level in v}}])
    assert "| m | bf16 / bf16 | 1 | 1.0 | 1.0 | 2.0 | 2.0 | 0.90x | 1.0x missed | 40 / 40 |" \
        in printed.splitlines()
    rows = server_peer.rows_for(["llama-134m", "default-lm"], ["native", "int8", "int4"],
                                "float32")
    assert [(r.label, r.quantization, r.gguf) for r in rows] == [
        ("f32", "none", "f32"), ("int8", "int8", "q8_0"), ("int4", "int4", "q4_0"),
        ("f32", "none", "f32")]


def test_probe_classifies_sigill() -> None:
    assert classify(None) == OK
    assert classify(-signal.SIGILL) == SIGILL and classify(128 + signal.SIGILL) == SIGILL
    assert classify(-signal.SIGSEGV) == FAILED and classify(1) == FAILED


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture(scope="module")
def probe_ggufs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The probe's small q8_0 / q4_0 models, written once for both cases."""
    return probe_models(tmp_path_factory.mktemp("probe"))


@pytest.mark.parametrize("refuses_amx", [True, False])
def test_build_script_falls_back_without_amx_on_sigill(tmp_path: Path, refuses_amx: bool,
                                                       probe_ggufs: list[Path]) -> None:
    """cmake stood in for: its "native" llama-server dies with SIGILL (the VM refusing
    AMX tiles) or runs; the script must then build without AMX and print that binary, or
    keep the native one and build nothing more."""
    build = tmp_path / "build"
    src = build / "src" / "vendor" / "llama.cpp"
    src.mkdir(parents=True)
    (build / "sdist.ok").touch()  # no download
    (build / "probe").mkdir()
    for gguf in probe_ggufs:  # where the script's probe keeps them
        (build / "probe" / gguf.name).symlink_to(gguf)
    tools = tmp_path / "bin"
    tools.mkdir()
    _script(tools / "dies", "#!/bin/sh\nkill -ILL $$\n")
    _script(tools / "runs", f"#!/bin/sh\nexec {sys.executable} "
                            f"{ROOT / 'tests' / 'bench' / 'fake_llama_server.py'} \"$@\"\n")
    native = "dies" if refuses_amx else "runs"
    _script(tools / "cmake", f"""#!/bin/sh
if [ "$1" = -B ]; then mkdir -p "$2"; echo "$@" > "$2/flags"; exit 0; fi
mkdir -p "$2/bin"
if grep -q AMX_TILE=OFF "$2/flags"; then cp {tools}/runs "$2/bin/llama-server"
else cp {tools}/{native} "$2/bin/llama-server"; fi
""")
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    env.pop("LLAMA_NO_AMX", None)
    done = subprocess.run(["bash", str(ROOT / "bench" / "build_llama_server.sh"), str(build),
                           sys.executable], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = "build-noamx" if refuses_amx else "build"
    assert done.stdout.strip() == str(src / folder / "bin" / "llama-server")
    assert (src / "build-noamx").exists() == refuses_amx
    assert "-DGGML_NATIVE=ON" in (src / "build" / "flags").read_text()
    if refuses_amx:
        assert "SIGILL" in done.stderr
        flags = (src / "build-noamx" / "flags").read_text()
        assert "-DGGML_AMX_INT8=OFF" in flags and "-DGGML_AVX512_VNNI=ON" in flags
        # Next time: straight to the AMX-free build, nothing rebuilt, nothing probed.
        again = subprocess.run(["bash", str(ROOT / "bench" / "build_llama_server.sh"),
                                str(build), sys.executable], env=env, capture_output=True,
                               text=True, timeout=60)
        assert again.stdout.strip() == done.stdout.strip() and again.stderr == ""
