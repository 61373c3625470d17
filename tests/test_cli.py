"""The command line as a new user meets it: help that names only real commands, shows
plain value names and the real defaults, and says every serve flag is an LLM_* variable;
invalid settings answered with one line each, not a usage dump."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
INTERNALS = ("list[", "lambda", "null}", "factory", "SecretStr", "{Path", "<", "Annotated")


def app_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_top_level_help_names_only_real_commands() -> None:
    run = app_cli("--help")
    assert run.returncode == 0, run.stderr
    assert "generate" not in run.stdout  # there is no such command
    for command in ("serve", "train", "eval", "quantize", "data"):
        assert command in run.stdout
    assert "LLM_" in run.stdout and "python -m app serve --help" in run.stdout


def test_serve_help_is_plain_and_names_every_flag_and_variable() -> None:
    run = app_cli("serve", "--help")
    assert run.returncode == 0, run.stderr
    text = run.stdout
    for internal in INTERNALS:
        assert internal not in text, internal
    assert "Every flag is also an environment variable" in text
    assert "default: default-lm=models/default-lm,fortune-classifier=models/fortune-classifier" \
        in " ".join(text.split())
    for name in Settings.model_fields:
        flag, env = "--" + name.replace("_", "-"), "LLM_" + name.upper()
        assert f"  {flag} " in text, flag
        assert f"env: {env}]" in " ".join(text.split()), env
    assert "  --port N\n" in text and "default: 127.0.0.1; env: LLM_HOST" in text
    assert "  --public-health / --no-public-health\n" in text
    assert "  --api-key-file PATH\n" in text
    assert "  --dtype auto|float32|bfloat16|float16\n" in text


def test_invalid_serve_settings_get_one_line_each_and_exit_2() -> None:
    run = app_cli("serve", "--port", "abc", "--max-n", "0")
    assert run.returncode == 2
    assert "--port / LLM_PORT: Input should be a valid integer" in run.stderr
    assert "--max-n / LLM_MAX_N: Input should be greater than or equal to 1" in run.stderr
    assert "python -m app serve --help" in run.stderr
    unknown = app_cli("serve", "--prot", "9000")
    assert unknown.returncode == 2
    assert "unrecognized arguments: --prot" in unknown.stderr
    for internal in INTERNALS:
        assert internal not in unknown.stderr, internal
