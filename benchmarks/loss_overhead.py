"""Forward+backward cost of each base loss vs its AKD versions, side by side in one run.

Measured as a user runs AKD: in the default uncertainty mode (read from ``AKDConfig``, never
written here) and in every mode the study runs (``relative``, ``batchnorm``), each at K=1 and K=4,
at 1 and 2 threads (``--threads``). Arms per loss (each timed call draws its avatars, as in
training):

- ``base``: the plain loss function/module;
- ``K=k <mode>``: ``AvatarLoss(base, K=k, p=0.1, uncertainty=<mode>)`` through its exact fast path
  where there is one (``avatarkd/losses/dropout.py``);
- ``K=4 <default> explicit``: the same forced onto the explicit path (``fast_paths = False``: K
  materialised avatars), with ``--explicit``;
- for ``mse`` also ``bn ref``, the reference code's formula written inline (non-affine batch norm
  of the student and of one ``F.dropout`` avatar, then mse), and ``floor``: ``mse`` of the teacher
  under one random byte per element (a mask from one draw per element, then mse), the least any
  avatar draw can cost, which ``K=4`` in the default mode (one Binomial count per element) is
  compared with.

The harness keeps the base loss's timing stable: freed memory is reused instead of returned to
the OS (``_timing.tune_allocator``: otherwise every call pays page faults on fresh memory, in
varying amounts), every arm is warmed up, arms are interleaved round-robin (``--repeats`` rounds)
so that machine noise hits all alike, and each ratio is the median of the per-round ratios, with
its spread (quartiles and extremes) printed and stored. The ``targets`` rows are the issue's
table (issue 19).

    python benchmarks/loss_overhead.py                          # FPN 2x256x100x152, 1 and 2 threads, 10 rounds
    python benchmarks/loss_overhead.py --sizes fpn seg --explicit --device cuda
    python benchmarks/loss_overhead.py --quick                  # a tiny check that it runs (seconds)
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avatarkd import AvatarLoss, losses  # noqa: E402
from avatarkd.atomic import atomic_write_json  # noqa: E402
from avatarkd.config import AKDConfig  # noqa: E402
from avatarkd.losses.dropout import masked  # noqa: E402
from benchmarks._timing import interleaved, paired_ratios, peak_tensor_bytes, summary, tune_allocator  # noqa: E402

SHAPES = {"fpn": (2, 256, 100, 152), "seg": (2, 2048, 64, 128)}
QUICK_SHAPE = (2, 8, 16, 16)
DEFAULT_MODE: str = AKDConfig.model_fields["uncertainty"].default
STUDY_MODES = ("relative", "batchnorm")  # the AKD modes the study trains (benchmarks/realistic.py)
MODES = tuple(dict.fromkeys((DEFAULT_MODE, *STUDY_MODES)))


def targets() -> list[tuple[str, str, str, str, float]]:
    """(row, loss, arm, reference arm, target): the issue's table, in the modes it names."""
    bn_rows = "AvatarLoss(mse, K=4, batchnorm) / AvatarLoss(mse, K=1, batchnorm)"
    return [
        (bn_rows, "mse", "K=4 batchnorm", "K=1 batchnorm", 2.5),
        (f"AvatarLoss(cwd, K=4) ({DEFAULT_MODE}) / cwd", "cwd", f"K=4 {DEFAULT_MODE}", "base", 3.0),
        ("AvatarLoss(mse, K=1, batchnorm) / reference formula", "mse", "K=1 batchnorm", "bn ref", 1.05),
        (f"AvatarLoss(mse, K=4) ({DEFAULT_MODE}) / its floor", "mse", f"K=4 {DEFAULT_MODE}", "floor", 1.15),
    ]


def reference_batchnorm_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The reference code's AKD at K=1: BN(affine=False) of the student and of one dropout avatar, then mse."""
    s = F.batch_norm(student, None, None, training=True, eps=1e-5)
    a = F.batch_norm(F.dropout(teacher, 0.1, training=True), None, None, training=True, eps=1e-5)
    return losses.mse(s, a)


def floor_mse(generator: torch.Generator):
    """``mse`` of the teacher under one random byte per element: the cost floor of any per-element avatar draw."""

    def run(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        byte = torch.empty(teacher.shape, dtype=torch.uint8, device=teacher.device).random_(generator=generator)
        return losses.mse(student, masked(teacher, byte >= 26))  # keep 230/256: p about 0.1

    return run


def base_losses(shape: tuple[int, ...], device: str, names: list[str]) -> dict[str, Any]:
    fns: dict[str, Any] = {"mse": losses.mse, "cwd": losses.cwd, "kd": losses.kd, "pkd": losses.pkd, "l1": losses.l1}
    if shape[1] <= 256:  # MGD's two 3x3 convs at 2048 channels would dwarf everything else
        fns["mgd"] = losses.MGD(shape[1]).to(device)
    return {name: fn for name, fn in fns.items() if name in names}


def arms(name: str, base: Any, modes: tuple[str, ...], explicit: bool, device: str) -> dict[str, Any]:
    out: dict[str, Any] = {"base": base}
    if name == "mse":
        out["bn ref"] = reference_batchnorm_mse
        out["floor"] = floor_mse(torch.Generator(device=device).manual_seed(0))
    for mode in modes:
        for k in (1, 4):
            out[f"K={k} {mode}"] = AvatarLoss(base, num_avatars=k, p=0.1, uncertainty=mode)
    if explicit:
        slow = AvatarLoss(base, num_avatars=4, p=0.1, uncertainty=DEFAULT_MODE)
        slow.fast_paths = False
        out[f"K=4 {DEFAULT_MODE} explicit"] = slow
    return out


def step(fn: Any, s: torch.Tensor, t: torch.Tensor):
    def run() -> None:
        s.grad = None
        fn(s, t).backward()

    return run


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shape: expected NxCxHxW, got {text!r}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10, help="interleaved rounds (default 10)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per arm first (default 3)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, one pass each")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", nargs="+", default=["fpn"], choices=list(SHAPES))
    ap.add_argument("--shape", type=parse_shape, help="one custom NxCxHxW tensor instead of --sizes")
    ap.add_argument("--losses", nargs="+", default=["mse", "cwd", "kd", "pkd", "l1", "mgd"])
    ap.add_argument("--modes", nargs="+", default=list(MODES), help=f"uncertainty modes (default {' '.join(MODES)})")
    ap.add_argument("--explicit", action="store_true", help="also time K=4 on the explicit K-avatar path")
    ap.add_argument("--memory", action="store_true", help="also the (slow, profiled) peak-memory pass")
    ap.add_argument("--no-allocator-tuning", action="store_true", help="leave glibc's malloc as it is")
    ap.add_argument("--quick", action="store_true", help=f"{'x'.join(map(str, QUICK_SHAPE))}, 2 rounds: runs?")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "loss_overhead.json")
    args = ap.parse_args()
    if args.quick:
        args.shape, args.repeats, args.warmup = args.shape or QUICK_SHAPE, min(args.repeats, 2), 1
    tuned = False if args.no_allocator_tuning or args.device.startswith("cuda") else tune_allocator()
    torch.manual_seed(0)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    modes = tuple(dict.fromkeys(args.modes))
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": args.device,
        "device_name": device_name,
        "default_mode": DEFAULT_MODE,
        "modes": list(modes),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "allocator_tuned": tuned,
        "command": " ".join(sys.argv),
        "results": {},
        "targets": [],
    }
    shapes = {"x".join(map(str, args.shape)): args.shape} if args.shape else {k: SHAPES[k] for k in args.sizes}
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(
            f"\nforward+backward per call, {device_name}, {threads} thread(s), {args.repeats} interleaved rounds; "
            f"default mode {DEFAULT_MODE!r}; ratio = median of per-round ratios to `base` [quartiles]"
        )
        print(
            f"{'tensor':<14} {'loss':<5} {'arm':<26} {'median ms':>10} {'x base':>7} {'[p25, p75]':>15} {'peak MiB':>9}"
        )
        for size, shape in shapes.items():
            s = torch.randn(shape, device=args.device, requires_grad=True)
            t = torch.randn(shape, device=args.device).relu()  # teacher features are post-ReLU-like
            for name, base in base_losses(shape, args.device, args.losses).items():
                runs = {arm: step(fn, s, t) for arm, fn in arms(name, base, modes, args.explicit, args.device).items()}
                times = interleaved(runs, args.repeats, args.device, warmup=args.warmup)
                peaks = {arm: peak_tensor_bytes(run, args.device) for arm, run in runs.items()} if args.memory else {}
                ratios = {arm: summary(paired_ratios(times, arm, "base")) for arm in runs}
                report["results"].setdefault(str(threads), {}).setdefault(size, {})[name] = {
                    "shape": list(shape),
                    "seconds": {arm: summary(v) for arm, v in times.items()},
                    "ratio_to_base": ratios,
                    "peak_bytes": peaks,
                    "all_s": times,
                }
                for arm in runs:
                    med = summary(times[arm])["median"]
                    r = ratios[arm]
                    peak = peaks.get(arm)
                    mib = f"{peak / 2**20:9.0f}" if peak is not None else f"{'-':>9}"
                    spread = f"[{r['p25']:.2f}, {r['p75']:.2f}]"
                    print(
                        f"{size:<14} {name:<5} {arm:<26} {1000 * med:>10.1f} {r['median']:>7.2f} {spread:>15} {mib}",
                        flush=True,
                    )
                for row, loss, arm, ref, target in targets():
                    if loss == name and arm in times and ref in times:
                        r = summary(paired_ratios(times, arm, ref))
                        report["targets"].append(
                            {
                                "row": row,
                                "threads": threads,
                                "size": size,
                                "target": target,
                                "ratio": r,
                                "met": r["median"] <= target,
                                "met_every_round": r["max"] <= target,
                            }
                        )
            del s, t
    print("\ntargets (issue 19), median of per-round ratios [min, max] over the rounds:")
    for res in report["targets"]:
        r = res["ratio"]
        verdict = "met" if res["met"] else "NOT met"
        if res["met"] and not res["met_every_round"]:
            verdict += " (not every round)"
        print(
            f"  {res['threads']}t {res['size']:<10} {res['row']:<66} {r['median']:6.2f} "
            f"[{r['min']:.2f}, {r['max']:.2f}] <= {res['target']:<5} {verdict}"
        )
    atomic_write_json(args.out, report)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
