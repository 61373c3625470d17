"""The LLM inference service (see README.md)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def app_version() -> str:
    """The installed package's version (or a marker when run from an uninstalled tree)."""
    try:
        return version("app")
    except PackageNotFoundError:
        return "0.0.0+unknown"
