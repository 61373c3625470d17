"""The training loop shared by LM pre-training and classifier fine-tuning.

forward -> loss -> backward -> clip gradients -> AdamW step, with linear warmup and a
cosine decay of the learning rate. Deterministic given the seed and thread count: batch
`s` is a pure function of (seed, s), so a resumed run sees exactly the batches that an
uninterrupted one would. Ctrl-C saves the state and the model before exiting.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int
    batch_size: int
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end (and on Ctrl-C)
    precision: str = "fp32"  # "fp32" | "bf16" (CPU autocast; weights stay fp32)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def batch_indices(step: int, batch_size: int, n_items: int, seed: int) -> Tensor:
    """Indices of the items in batch `step`: epochs of seeded permutations, sliced."""
    per_epoch = max(1, n_items // batch_size)
    epoch, offset = divmod(step, per_epoch)
    perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[offset * batch_size: (offset + 1) * batch_size]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # No weight decay on norms, biases and embeddings' 1-D companions.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def autocast(precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        out_dir: Path,
        loss_fn: Callable[[int], tuple[Tensor, int]],
        evaluate: Callable[[], dict[str, float]],
        save_model: Callable[[], None],
    ) -> None:
        """loss_fn(step) -> (loss of batch `step`, tokens in it)."""
        self.model = model
        self.cfg = cfg
        self.out_dir = out_dir
        self.loss_fn = loss_fn
        self.evaluate = evaluate
        self.save_model = save_model
        self.optimizer = make_optimizer(model, cfg)
        self.step = 0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ state

    def save_state(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.out_dir / (STATE_FILE + ".tmp")
        torch.save(
            {
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "config": asdict(self.cfg),
                "history": self.history,
            },
            tmp,
        )
        tmp.replace(self.out_dir / STATE_FILE)  # never a half-written state file

    def load_state(self) -> None:
        path = self.out_dir / STATE_FILE
        if not path.exists():
            raise FileNotFoundError(f"--resume given but {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["config"] != asdict(self.cfg):
            changed = sorted(k for k, v in asdict(self.cfg).items() if state["config"].get(k) != v)
            raise ValueError(f"cannot resume: training settings changed ({', '.join(changed)})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        log.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------ loop

    def run(self, resume: bool = False) -> dict[str, float]:
        torch.manual_seed(self.cfg.seed)
        if resume:
            self.load_state()
        self.model.train()
        bar = tqdm(total=self.cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True)
        tokens_seen, started = 0, time.perf_counter()
        try:
            while self.step < self.cfg.max_steps:
                loss, n_tokens = self._one_step()
                tokens_seen += n_tokens
                rate = tokens_seen / max(1e-9, time.perf_counter() - started)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr_at(self.step - 1, self.cfg):.2e}",
                                tok_s=f"{rate:,.0f}")
                if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                    self._evaluate(bar)
                if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                    self.save_state()
        except KeyboardInterrupt:
            bar.close()
            log.warning("interrupted at step %d: saving state and model", self.step)
            self.save_state()
            self.model.eval()
            self.save_model()
            raise
        bar.close()
        result = self._evaluate(None)
        self.save_state()
        self.model.eval()
        self.save_model()
        return result

    def _one_step(self) -> tuple[float, int]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.cfg)
        with autocast(self.cfg.precision):
            loss, n_tokens = self.loss_fn(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach()), n_tokens

    def _evaluate(self, bar: tqdm[Any] | None) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), autocast(self.cfg.precision):
            metrics = {"step": float(self.step), **self.evaluate()}
        self.model.train()
        self.history.append(metrics)
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        if bar is not None:
            bar.write(f"eval {text}")
        log.info("eval %s", text)
        return metrics
