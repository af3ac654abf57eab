"""``avatarkd`` command line: train, eval, check-data, export, avatars, maskd-tokens, demo.

Input errors (config, data, checkpoint) print one line and exit with status 2; a run stopped by
SIGTERM/SIGINT saves a checkpoint and exits with 128 + the signal number.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import AvatarKDError, message_of

log = logging.getLogger("avatarkd")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runner import train

    overrides = list(args.set or [])
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.amp:
        overrides.append(f"train.amp={args.amp}")
    cfg = load_config(args.config, overrides)
    resume: bool | Path = Path(args.resume) if args.resume not in (None, "auto") else args.resume == "auto"
    result = train(cfg, resume=resume)
    metric = result["primary_metric"]
    print(
        f"{cfg.task}: {metric} = {result['metrics'][metric]:.4f} after {result['step']} steps "
        f"({result['wall_seconds']:.0f} s); outputs in {cfg.output_dir}"
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .config import load_config
    from .runner import evaluate

    overrides = list(args.set or []) + [f"model.weights={args.weights}", "distill=null", "teacher=null"]
    if args.split:
        overrides.append(f"eval.split={args.split}")
    metrics = evaluate(load_config(args.config, overrides))
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data import format_reports
    from .runner import check_data

    cfg = load_config(args.config, list(args.set or []))
    samples = None if args.all else args.samples or cfg.data.check_samples or None
    task, reports = check_data(cfg, samples)
    print(format_reports(reports))
    unreadable = sum(r.unreadable for r in reports)
    skipped = f"; {unreadable} unreadable images will be skipped (data.skip_unreadable)" if unreadable else ""
    print(f"data ok: {cfg.data.format} format, {task.num_classes} classes (from {reports[0].class_source}){skipped}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from .config import TrainConfig
    from .engine.checkpoint import load_file
    from .engine.export import export_student
    from .runner import build_model
    from .tasks import make_task

    ckpt = load_file(Path(args.checkpoint))
    if "config" not in ckpt or "model" not in ckpt:
        raise AvatarKDError(f"{args.checkpoint}: not an avatarkd training checkpoint")
    cfg = TrainConfig.model_validate(ckpt["config"])
    task = make_task(cfg)
    names = list(ckpt.get("class_names") or [])
    task.set_classes(len(names), names)  # includes background for segmentation, as trained
    model = build_model(task, cfg.model, "student", torch.device("cpu"), (ckpt["model"], Path(args.checkpoint)))
    export_student(model, Path(args.out), cfg, task.class_names, torchscript=args.torchscript)
    print(f"wrote {args.out} (student only)")
    return 0


def _cmd_avatars(args: argparse.Namespace) -> int:
    from .capacity import DEFAULT_NUM_AVATARS, DEFAULT_PS, format_table, measure_avatars, parse_rates, write_outputs
    from .config import load_config

    overrides = list(args.set or [])
    if args.split:
        overrides.append(f"eval.split={args.split}")
    rates = parse_rates(args.p) if args.p is not None else list(DEFAULT_PS)
    cfg = load_config(args.config, overrides)
    result = measure_avatars(
        cfg,
        points=args.points,
        ps=rates,
        num_avatars=args.num_avatars if args.num_avatars is not None else DEFAULT_NUM_AVATARS,
        seed=args.seed,
    )
    print(format_table(result))
    json_path = Path(args.json) if args.json else None
    plot_path = Path(args.plot) if args.plot else (json_path.with_suffix(".png") if json_path else None)
    for written in write_outputs(result, json_path, plot_path):
        if written is not None:
            print(f"wrote {written}")
    return 0


def _cmd_maskd_tokens(args: argparse.Namespace) -> int:
    from .config import load_config
    from .maskd_tokens import DEFAULT_LR, DEFAULT_STEPS, train_tokens

    cfg = load_config(args.config, list(args.set or []))
    result = train_tokens(
        cfg,
        Path(args.out),
        steps=args.steps if args.steps is not None else DEFAULT_STEPS,
        lr=args.lr if args.lr is not None else DEFAULT_LR,
    )
    history = result["history"]
    print(
        f"maskd-tokens: {len(result['levels'])} levels of {', '.join(result['points'])}; "
        f"loss {history[0]:.4f} -> {history[-1]:.4f} in {len(history)} steps; wrote {args.out}"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.output_dir), quick=args.quick, seed=args.seed, record=Path(args.json) if args.json else None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatarkd", description="Avatar Knowledge Distillation for PyTorch models")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a teacher or a student (with or without distillation) from a YAML config")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.steps=100")
    p.add_argument("--output-dir", help="where checkpoints, logs, plots and metrics go")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], help="mixed precision (fp16 needs CUDA)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="continue from the newest checkpoint in output_dir, or from the given checkpoint file",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate weights on the config's validation set")
    p.add_argument("config")
    p.add_argument(
        "--weights",
        required=True,
        help="weights of the config's model: a checkpoint, an exported student.pt, any state_dict "
        "file, or torchvision:<EnumClass>.<NAME> (loaded as model.weights)",
    )
    p.add_argument("--split", choices=["val", "test"], help="the split to evaluate (default: eval.split)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "check-data",
        help="read a sample of the config's data and report what is wrong with it (also run at the start of train)",
    )
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--samples", type=int, help="images per split to read (default: data.check_samples)")
    p.add_argument("--all", action="store_true", help="read every image")
    p.set_defaults(func=_cmd_check_data)

    p = sub.add_parser("export", help="write student-only weights (no teacher, no connectors) for deployment")
    p.add_argument("checkpoint", help="a training checkpoint (output_dir/checkpoints/step_*.pt)")
    p.add_argument("--out", required=True, help="output .pt file (a plain state_dict)")
    p.add_argument("--torchscript", action="store_true", help="also write a TorchScript module (.ts)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "avatars",
        help="how good the teacher's Avatars are at each distillation point and drop rate: alone, as an "
        "ensemble and as a per-image oracle (prints a table; --json/--plot write them)",
    )
    p.add_argument("config", help="a distillation config (its teacher: and distill.points)")
    p.add_argument("--points", nargs="+", metavar="NAME", help="distillation points by name (default: all)")
    p.add_argument(
        "--p", metavar="P,P,...", help="drop rates / noise strengths, comma-separated (default 0.05,0.1,0.2,0.3)"
    )
    p.add_argument("--num-avatars", type=int, metavar="K", help="single Avatars per point and p (default 4)")
    p.add_argument("--split", choices=["val", "test"], help="the split to evaluate on (default: eval.split)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON (and the plots beside it)")
    p.add_argument("--plot", metavar="FILE", help="the plot's PNG (default: the JSON's name with .png)")
    p.add_argument("--seed", type=int, default=0, help="seeds the Avatars' draws")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_avatars)

    p = sub.add_parser(
        "maskd-tokens",
        help="MasKD stage 1: learn the receptive tokens of the config's maskd points on the frozen teacher",
    )
    p.add_argument("config", help="a distillation config with maskd points (its teacher: is used)")
    p.add_argument("--out", required=True, help="the tokens file to write (loss_kwargs: {tokens: FILE} reads it)")
    p.add_argument("--steps", type=int, help="training steps (default 2000)")
    p.add_argument("--lr", type=float, help="Adam learning rate of tokens and predictor (default 1e-3)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_maskd_tokens)

    p = sub.add_parser("demo", help="teacher, student alone, base KD and AKD on the bundled data; prints a table")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a much shorter schedule (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON here (e.g. docs/demo.json)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from .engine.trainer import Stopped

    try:
        return int(args.func(args) or 0)
    except AvatarKDError as err:
        print(f"avatarkd: error: {message_of(err)}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"avatarkd: stopped by signal {stop.signum}; checkpoint saved, continue with --resume", file=sys.stderr)
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
