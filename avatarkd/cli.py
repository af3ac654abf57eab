"""``avatarkd`` command line: train, eval, check-data, export, demo.

Input errors (config, data, checkpoint) print one line and exit with status 2; a run stopped by
SIGTERM/SIGINT saves a checkpoint and exits with 128 + the signal number.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import AvatarKDError

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
    task.class_names = list(ckpt.get("class_names") or [])
    task.num_classes = len(task.class_names)  # includes background for segmentation, as trained
    model = build_model(task, cfg.model, "student", torch.device("cpu"), (ckpt["model"], Path(args.checkpoint)))
    export_student(model, Path(args.out), cfg, task.class_names, torchscript=args.torchscript)
    print(f"wrote {args.out} (student only)")
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
        print(f"avatarkd: error: {err}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"avatarkd: stopped by signal {stop.signum}; checkpoint saved, continue with --resume", file=sys.stderr)
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
