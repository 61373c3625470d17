"""Command line: `python -m app serve|train|eval|quantize|data ...`.

`python -m app serve --help` lists the server's flags; each is also an LLM_* environment
variable (--max-num-seqs 8 is LLM_MAX_NUM_SEQS=8). Training code is imported only by the
commands that need it, so the server never loads it.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

    from app.train.loop import TrainConfig

log = logging.getLogger("app.cli")


def _out(text: str) -> None:
    """A command's result goes to stdout (logs go to stderr)."""
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _add_train_args(p: argparse.ArgumentParser, steps: int, batch: int, lr: float,
                    warmup: int) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=batch)
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr")
    g.add_argument("--warmup", type=int, default=warmup, help="linear warmup steps")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--eval-every", type=int, default=0, help="steps between evaluations")
    g.add_argument("--save-every", type=int, default=0, help="steps between resumable states")
    g.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: CPU autocast for matmuls (weights and optimizer stay fp32)")
    g.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")


def _add_quantization_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantization", choices=["none", "int8", "int4"], default="none",
                   help="evaluate the model quantized at load")
    p.add_argument("--group-size", type=int, default=64, help="int4 group size")


def _train_config(args: argparse.Namespace) -> TrainConfig:
    from app.train.loop import TrainConfig

    return TrainConfig(
        max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, seed=args.seed,
        eval_every=args.eval_every, save_every=args.save_every, precision=args.precision,
    )


def _add_lora_parser(tsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lora = tsub.add_parser(
        "lora", help="fine-tune a LoRA adapter of a checkpoint (saved in PEFT format)",
        description="Base weights stay frozen; low-rank A/B pairs are trained on the chosen "
                    "projections. Writes adapter_config.json, adapter_model.safetensors, a "
                    "card (README.md) with the measured effect, and training_summary.json.")
    lora.add_argument("inputs", nargs="+",
                      help="--task lm: text files, folders, or .jsonl with 'text'; "
                           "--task classify: one CSV/JSONL file of text,label rows")
    lora.add_argument("--base", required=True, help="checkpoint directory to adapt")
    lora.add_argument("--out", type=Path, required=True, help="adapter directory to write")
    lora.add_argument("--task", choices=["lm", "classify"], default="lm",
                      help="lm: next-token adapter on text; classify: adapter + a trained "
                           "classification head (saved as modules_to_save 'score')")
    lora.add_argument("--val", nargs="*", help="held-out files (default: a split of INPUTS)")
    lora.add_argument("--val-fraction", type=float, default=0.05)
    lora.add_argument("--general", nargs="*",
                      help="text outside the domain: the card reports its perplexity before "
                           "and after, to show how much of the base's ability is kept")
    lora.add_argument("--context", type=int, default=0, help="block length (0: the base's)")
    lora.add_argument("--description", help="one paragraph for the card: what the text is")
    g = lora.add_argument_group("LoRA")
    g.add_argument("--rank", type=int, default=8, help="r")
    g.add_argument("--alpha", type=float, default=16.0, help="lora_alpha")
    g.add_argument("--rslora", action="store_true",
                   help="scale by alpha/sqrt(r) instead of alpha/r (rank-stabilised LoRA)")
    g.add_argument("--dropout", type=float, default=0.0, help="lora_dropout")
    g.add_argument("--target-modules", default="",
                   help="comma-separated checkpoint module names (Llama family: q_proj, "
                        "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; GPT-2: "
                        "c_attn, c_proj, c_fc); default: every linear projection")
    c = lora.add_argument_group("--task classify")
    c.add_argument("--test", help="held-out labelled file (default: a split of the data)")
    c.add_argument("--max-length", type=int, default=128, help="tokens kept per text")
    c.add_argument("--text-column", default="text")
    c.add_argument("--label-column", default="label")
    _add_train_args(lora, steps=300, batch=16, lr=1e-3, warmup=20)
    # peft's and most LoRA recipes' choice: decaying A and B towards zero fights the update.
    lora.set_defaults(weight_decay=0.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="INFO",
                        help="DEBUG | INFO | WARNING | ERROR (train, eval, quantize, data; "
                             "serve takes its own --log-level)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP server (flags, each also an LLM_* "
                                 "variable: `python -m app serve --help`)")

    train = sub.add_parser("train", help="train a language model or a classifier")
    tsub = train.add_subparsers(dest="what", required=True)

    lm = tsub.add_parser("lm", help="pre-train a decoder-only language model on text")
    lm.add_argument("inputs", nargs="+", help="text files, folders, or .jsonl with 'text'")
    lm.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    lm.add_argument("--val", nargs="*", help="validation files (default: a held-out split)")
    lm.add_argument("--val-fraction", type=float, default=0.05)
    lm.add_argument("--tokenizer", help="reuse this directory's tokenizer.json")
    lm.add_argument("--vocab-size", type=int, default=8192)
    lm.add_argument("--teacher", help="distill from this checkpoint (its tokenizer is used): "
                    "the loss adds KL(teacher || student) at every position")
    lm.add_argument("--distill-weight", type=float, default=1.0,
                    help="with --teacher: weight of the KL term; 1 - weight goes to "
                    "cross-entropy on the text")
    shape = lm.add_argument_group("model shape")
    shape.add_argument("--family", choices=["llama", "gpt2"], default="llama")
    shape.add_argument("--hidden", type=int, default=256)
    shape.add_argument("--layers", type=int, default=6)
    shape.add_argument("--heads", type=int, default=8)
    shape.add_argument("--kv-heads", type=int, default=4)
    shape.add_argument("--intermediate", type=int, default=704)
    shape.add_argument("--context", type=int, default=256)
    _add_train_args(lm, steps=2000, batch=16, lr=1e-3, warmup=100)

    clf = tsub.add_parser("classifier", help="fine-tune a classifier from a trained LM")
    clf.add_argument("data", help="CSV (with header) or JSONL of text,label rows")
    clf.add_argument("--base", required=True, help="language-model checkpoint to start from")
    clf.add_argument("--out", type=Path, required=True)
    clf.add_argument("--test", help="held-out labelled file (default: a split of DATA)")
    clf.add_argument("--val-fraction", type=float, default=0.1)
    clf.add_argument("--max-length", type=int, default=128, help="tokens kept per text")
    clf.add_argument("--text-column", default="text")
    clf.add_argument("--label-column", default="label")
    _add_train_args(clf, steps=600, batch=32, lr=2e-4, warmup=30)

    _add_lora_parser(tsub)

    ev = sub.add_parser("eval", help="evaluate a checkpoint")
    esub = ev.add_subparsers(dest="what", required=True)
    elm = esub.add_parser("lm", help="loss, perplexity and accuracy on text")
    elm.add_argument("inputs", nargs="+")
    elm.add_argument("--model", required=True)
    elm.add_argument("--context", type=int, default=0, help="block length (0: the model's)")
    for p in (elm,):
        _add_quantization_args(p)
    eclf = esub.add_parser("classifier", help="accuracy, macro-F1, confusion matrix")
    eclf.add_argument("data")
    eclf.add_argument("--model", required=True)
    eclf.add_argument("--max-length", type=int, default=128)
    eclf.add_argument("--text-column", default="text")
    eclf.add_argument("--label-column", default="label")
    _add_quantization_args(eclf)

    quant = sub.add_parser("quantize", help="write a quantized copy of a checkpoint "
                                            "(loads without re-quantizing)")
    quant.add_argument("source", type=Path, help="checkpoint directory (fp32/bf16/fp16)")
    quant.add_argument("dest", type=Path, help="directory to write")
    quant.add_argument("--method", choices=["int8", "int4"], required=True)
    quant.add_argument("--group-size", type=int, default=64,
                       help="int4 group size: 32, 64 or 128")
    quant.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                       default="float32", help="dtype of the tensors kept in floating point")

    data = sub.add_parser("data", help="prepare the shipped models' training data")
    dsub = data.add_subparsers(dest="what", required=True)
    fortunes = dsub.add_parser("fortunes", help="Debian fortunes -> LM and classifier splits")
    fortunes.add_argument("--out", type=Path, required=True)
    fortunes.add_argument("--domain", action="append", default=[], metavar="CATEGORY",
                          help="also write domain/CATEGORY/{train,val,general_val}.jsonl: one "
                               "fortune file's text, for a LoRA adapter (repeatable)")
    return parser


def run_train(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = _train_config(args)
    if args.what == "lora":
        return run_train_lora(args, cfg)
    if args.what == "lm":
        from app.train.lm import ModelShape, train_lm

        shape = ModelShape(family=args.family, hidden_size=args.hidden, num_layers=args.layers,
                           num_heads=args.heads, num_kv_heads=args.kv_heads,
                           intermediate_size=args.intermediate, context=args.context)
        summary = train_lm(args.inputs, args.out, shape, cfg, vocab_size=args.vocab_size,
                           val_inputs=args.val, val_fraction=args.val_fraction,
                           tokenizer_dir=args.tokenizer, resume=args.resume,
                           teacher_dir=args.teacher, distill_weight=args.distill_weight)
        for key, value in summary.items():
            _out(f"{key}: {value:.6g}")
        return 0
    from app.train.classifier import train_classifier

    report = train_classifier(args.data, args.base, args.out, cfg, test_file=args.test,
                              val_fraction=args.val_fraction, max_length=args.max_length,
                              text_column=args.text_column, label_column=args.label_column,
                              resume=args.resume)
    _out(report.as_text())
    return 0


def run_train_lora(args: argparse.Namespace, cfg: TrainConfig) -> int:
    from app.train.lora import LoraSettings

    targets = tuple(t.strip() for t in args.target_modules.split(",") if t.strip())
    settings = LoraSettings(rank=args.rank, alpha=args.alpha, use_rslora=args.rslora,
                            dropout=args.dropout, target_modules=targets)
    command = "python -m app " + shlex.join(args.argv)  # for the card's "Reproduce"
    if args.task == "classify":
        from app.train.lora_classifier import train_lora_classifier

        if len(args.inputs) != 1:
            _err("error: --task classify takes one labelled file")
            return 2
        report = train_lora_classifier(
            args.inputs[0], args.base, args.out, settings, cfg, test_file=args.test,
            val_fraction=args.val_fraction, max_length=args.max_length,
            text_column=args.text_column, label_column=args.label_column,
            resume=args.resume, description=args.description, command=command)
        _out(report.as_text())
        return 0
    from app.train.lora_lm import LoraData, train_lora_lm

    data = LoraData(inputs=args.inputs, val_inputs=args.val, val_fraction=args.val_fraction,
                    general_inputs=args.general, context=args.context)
    summary = train_lora_lm(args.base, args.out, data, settings, cfg, resume=args.resume,
                            description=args.description, command=command)
    for key, value in summary.items():
        _out(f"{key}: {value:.6g}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from app.checkpoint import load_model
    from app.tokenizer import Tokenizer
    from app.train.data import pack_tokens, read_documents, read_labelled
    from app.train.evaluate import classification_report, lm_metrics, predict_labels

    loaded = load_model(args.model, dtype="float32", device="cpu",
                        quantization=args.quantization, group_size=args.group_size)
    tokenizer = Tokenizer.from_dir(args.model)
    if args.what == "lm":
        eos = tokenizer.eos_ids[0]
        context = args.context or loaded.config.max_model_len
        docs = read_documents(args.inputs)
        rows = pack_tokens((tokenizer.encode(d, add_special_tokens=False) for d in docs),
                           eos, context)
        for key, value in lm_metrics(loaded.model, rows).items():
            _out(f"{key}: {value:.6g}")
        return 0
    from app.train.classifier import encode_rows

    labelled = read_labelled(args.data, args.text_column, args.label_column)
    labels = loaded.config.id2label
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({r.label for r in labelled} - set(index))
    if unknown:
        _err(f"error: labels not known to the model: {unknown}")
        return 2
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_ids[0]
    predicted = predict_labels(loaded.model, encode_rows(tokenizer, labelled, args.max_length), pad)
    gold = [index[r.label] for r in labelled]
    _out(classification_report(gold, predicted, labels).as_text())
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from app.checkpoint import load_model, save_quantized
    from app.modeling.quantized_model import describe

    if args.dest.resolve() == args.source.resolve():
        _err("error: dest must differ from source")
        return 2
    loaded = load_model(args.source, dtype=args.dtype, device="cpu", quantization=args.method,
                        group_size=args.group_size)
    save_quantized(loaded, args.dest)
    _out(f"wrote {args.dest}: {describe(loaded.model)}")
    return 0


def _settings_errors(exc: ValidationError) -> str:
    """One line per invalid setting, named as both its flag and its variable."""
    lines = []
    for e in exc.errors():
        name = ".".join(str(p) for p in e.get("loc", ()))
        where = (f"--{name.replace('_', '-')} / LLM_{name.upper()}: " if name else "")
        got = f" (got {e['input']!r})" if name and "input" in e else ""
        lines.append(f"  {where}{e.get('msg')}{got}")
    return "\n".join(lines)


def run_serve(argv: list[str]) -> int:
    from pydantic import ValidationError
    from pydantic_settings import CliApp, SettingsError

    from app.config import Settings

    if "-h" in argv or "--help" in argv:
        from app.serve_help import serve_help

        _out(serve_help().rstrip("\n"))
        return 0
    try:
        # No exit on a parse error: pydantic-settings would print its usage block, with
        # Python types in it; we say what is wrong and where the help is.
        settings = CliApp.run(Settings, cli_args=argv, cli_exit_on_error=False)
    except ValidationError as exc:
        _err(f"error: invalid settings:\n{_settings_errors(exc)}\n"
             "(see python -m app serve --help)")
        return 2
    except SettingsError as exc:
        _err(f"error: {exc} (see python -m app serve --help)")
        return 2
    from app.listen import CannotListen, bind

    try:
        sock = bind(settings.host, settings.port)
    except CannotListen as exc:
        _err(f"error: {exc}")
        return 2
    from app.serve import serve  # imports torch: only once the port is known to be free

    return serve(settings, sock)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["serve"]:
        # Serve flags come from the Settings model (pydantic-settings), one per setting.
        return run_serve(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    args.argv = args_list
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from app.checkpoint import CheckpointError
    from app.tokenizer import TokenizerError

    try:
        if args.command == "train":
            return run_train(args)
        if args.command == "eval":
            return run_eval(args)
        if args.command == "quantize":
            return run_quantize(args)
        if args.command == "data":
            from app.train.fortunes import prepare

            prepare(args.out, domains=tuple(args.domain))
            return 0
    except KeyboardInterrupt:
        _err("interrupted; state saved (continue with --resume)")
        return 130
    except (CheckpointError, TokenizerError, ValueError, FileNotFoundError) as exc:
        _err(f"error: {exc}")
        return 2
    parser.error(f"unknown command {args.command}")
    return 2
