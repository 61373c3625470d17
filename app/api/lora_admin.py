"""Loading and unloading LoRA adapters, for the startup flags (--lora) and vLLM's runtime
endpoints alike: which served model an adapter goes on, that its name is unique among
models and adapters, and (at run time) that its folder lies inside --lora-dir.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

from app.api.errors import BadRequest, NotFound
from app.api.state import ServedModel, ServerState
from app.checkpoint.lora import read_peft_adapter
from app.config import check_name
from app.engine.adapters import AdapterEntry


def confined_path(lora_dir: Path, given: str) -> Path:
    """The adapter folder `given` (absolute, or relative to `lora_dir`) with every symlink
    and `..` resolved, so what is checked is what will be read; BadRequest unless it and
    the files in it lie inside `lora_dir`."""
    if not given.strip() or "\x00" in given:
        raise BadRequest("lora_path must be a folder's path", param="lora_path")
    root = lora_dir.resolve()
    candidate = Path(given)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, say
        raise BadRequest(f"lora_path {given!r} cannot be resolved: {exc}",
                         param="lora_path") from None
    if not resolved.is_relative_to(root):
        raise BadRequest(f"lora_path {given!r} is outside the server's LoRA folder "
                         "(--lora-dir): runtime loads are confined to it",
                         param="lora_path")
    if not resolved.is_dir():
        raise BadRequest(f"lora_path {given!r} is not a folder inside --lora-dir (an "
                         "adapter is a folder with adapter_config.json and "
                         "adapter_model.safetensors)", param="lora_path")
    # The loader opens files in the folder: a file that is a link to elsewhere would read
    # outside the folder as surely as a path with `..`.
    for entry in resolved.iterdir():
        if not entry.resolve().is_relative_to(root):
            raise BadRequest(f"lora_path {given!r}: {entry.name} links outside --lora-dir",
                             param="lora_path")
    return resolved


def base_model(state: ServerState, base: str | None, param: str) -> ServedModel:
    """The served model an adapter goes on: `base`, or the first language model."""
    if base is not None:
        model = state.models.get(base)
        if model is None:
            raise NotFound(f"base model {base!r} is not served (served: "
                           f"{', '.join(state.models)})", param=param)
        return model
    model = next((m for m in state.models.values() if m.is_lm), None)
    if model is None:
        raise BadRequest("no language model is served, so there is nothing to adapt",
                         param=param)
    return model


async def load_adapter(state: ServerState, name: str, path: Path, base: str | None, *,
                       base_param: str = "base_model_name") -> tuple[ServedModel,
                                                                     AdapterEntry]:
    """Load the adapter `name` from `path` onto its base model. The name is taken from
    the start, so two loads of one name cannot race; a failed load gives it back."""
    try:
        check_name(name, "adapter")
    except ValueError as exc:
        raise BadRequest(str(exc), param="lora_name") from None
    if name in state.models:
        raise BadRequest(f"{name!r} is the name of a served model; an adapter needs a name "
                         "of its own", param="lora_name")
    if name in state.adapters:
        # vLLM's words and status for a duplicate, which its clients look for
        raise BadRequest(f"The lora adapter '{name}' has already been loaded.",
                         param="lora_name")
    model = base_model(state, base, base_param)
    state.adapters[name] = model.name

    async def load() -> AdapterEntry:
        try:
            return await model.engine.load_adapter(name, functools.partial(
                read_peft_adapter, path, model.loaded.config, name=name,
                max_rank=model.engine.config.max_lora_rank))
        except BaseException:
            state.adapters.pop(name, None)
            raise

    # Shielded: a caller that stops waiting (a client hanging up) must not leave the
    # runner holding weights that nothing else knows of.
    entry = await asyncio.shield(asyncio.ensure_future(load()))
    return model, entry


async def unload_adapter(state: ServerState, name: str) -> None:
    """Refuse new requests for `name` at once, let those in flight finish, then drop it."""
    model = state.models.get(state.adapters.get(name, ""))
    if model is None or not model.engine.has_adapter(name):
        raise NotFound(f"The lora adapter '{name}' cannot be found.", param="lora_name")

    async def unload() -> None:
        try:
            await model.engine.unload_adapter(name)
        finally:
            state.adapters.pop(name, None)

    await asyncio.shield(asyncio.ensure_future(unload()))  # (as for load_adapter)
