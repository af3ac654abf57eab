"""Forward+backward cost of each base loss vs its AKD versions, side by side in one run.

Arms per loss (each timed call draws its avatars, as in training):

- ``base``: the plain loss function/module;
- ``K=1``, ``K=4``, ``K=8``: AvatarLoss, dropout 0.1, uncertainty ``variance`` (the default mode until the evidence study), through
  the exact dropout fast paths where the loss has one (mse, mgd: keep counts; cwd, kd: streamed masks);
- ``K=4 explicit``: the same K=4 AvatarLoss forced onto the explicit path (``fast_paths = False``:
  K materialised avatars), i.e. the old code path, measured in the same run;
- for ``mse`` also ``bn ref`` and ``K=1 bn``: the reference code's formula written out below
  (non-affine batch norm of the student and of one ``F.dropout`` avatar, then mse) and
  ``AvatarLoss(mse, K=1, uncertainty="batchnorm")``, which computes the same thing.

Calls are interleaved round-robin over the arms so that machine noise hits all of them alike; the
table shows each arm's median and its ratio to ``base`` (``bn ref`` for ``K=1 bn``) from the same
run. Peak memory: the highest sum of live tensor bytes during one call, allocated inside it (CUDA:
the allocator's peak; CPU: torch.profiler's memory timeline), in MiB and in feature maps above the
base loss's peak. Targets (issue 12): mse K=4 <= 2.0x base, cwd K=4 <= 3.0x base, K=1 bn <= 1.05x
bn ref, peak extra memory of K=4 <= one feature map.

    python benchmarks/loss_overhead.py                                   # FPN 2x256x100x152 and seg 2x2048x64x128
    python benchmarks/loss_overhead.py --repeats 9 --device cuda
    python benchmarks/loss_overhead.py --shape 2x8x16x16 --repeats 1     # a quick check that it runs
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
from benchmarks._timing import interleaved, medians, peak_tensor_bytes  # noqa: E402

SHAPES = {"fpn": (2, 256, 100, 152), "seg": (2, 2048, 64, 128)}
TARGETS = {("mse", "K=4"): 2.0, ("cwd", "K=4"): 3.0, ("mse", "K=1 bn"): 1.05}


def reference_batchnorm_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The reference code's AKD at K=1: BN(affine=False) of the student and of one dropout avatar, then mse."""
    s = F.batch_norm(student, None, None, training=True, eps=1e-5)
    a = F.batch_norm(F.dropout(teacher, 0.1, training=True), None, None, training=True, eps=1e-5)
    return losses.mse(s, a)


def base_losses(shape: tuple[int, ...], device: str, names: list[str]) -> dict[str, Any]:
    fns: dict[str, Any] = {"mse": losses.mse, "cwd": losses.cwd, "kd": losses.kd, "pkd": losses.pkd, "l1": losses.l1}
    if shape[1] <= 256:  # MGD's two 3x3 convs at 2048 channels would dwarf everything else
        fns["mgd"] = losses.MGD(shape[1]).to(device)
    return {name: fn for name, fn in fns.items() if name in names}


def arms(name: str, base: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"base": base}
    if name == "mse":
        out["bn ref"] = reference_batchnorm_mse
        out["K=1 bn"] = AvatarLoss(base, num_avatars=1, p=0.1, uncertainty="batchnorm")
    for k in (1, 4, 8):
        out[f"K={k}"] = AvatarLoss(base, num_avatars=k, p=0.1, uncertainty="variance")
    explicit = AvatarLoss(base, num_avatars=4, p=0.1, uncertainty="variance")
    explicit.fast_paths = False
    out["K=4 explicit"] = explicit
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
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--shape", type=parse_shape, help="one custom NxCxHxW tensor instead of --sizes")
    ap.add_argument("--losses", nargs="+", default=["mse", "cwd", "kd", "pkd", "l1", "mgd"])
    ap.add_argument("--no-memory", action="store_true", help="skip the (slow, profiled) peak-memory pass")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "loss_overhead.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "device_name": device_name,
        "repeats": args.repeats,
        "command": " ".join(sys.argv),
        "results": {},
        "targets": {},
    }
    shapes = {"x".join(map(str, args.shape)): args.shape} if args.shape else {k: SHAPES[k] for k in args.sizes}
    print(
        f"forward+backward per call, {device_name}, {report['threads']} threads, median of {args.repeats} (interleaved)"
    )
    print(f"{'tensor':<16} {'loss':<5} {'arm':<13} {'median ms':>10} {'x base':>7} {'peak MiB':>9} {'+maps':>6}")
    for size, shape in shapes.items():
        s = torch.randn(shape, device=args.device, requires_grad=True)
        t = torch.randn(shape, device=args.device).relu()  # teacher features are post-ReLU-like
        feature_map = s.numel() * s.element_size()
        for name, base in base_losses(shape, args.device, args.losses).items():
            runs = {arm: step(fn, s, t) for arm, fn in arms(name, base).items()}
            times = interleaved(runs, args.repeats, args.device, warmup=2)  # warm-up initialises running estimates
            med = medians(times)
            peaks = {} if args.no_memory else {arm: peak_tensor_bytes(run, args.device) for arm, run in runs.items()}
            ratio = {arm: med[arm] / med["bn ref" if arm == "K=1 bn" else "base"] for arm in med}
            extra = {
                arm: (p - peaks["base"]) / feature_map if p is not None and peaks.get("base") is not None else None
                for arm, p in peaks.items()
            }
            report["results"].setdefault(size, {})[name] = {
                "shape": list(shape),
                "median_s": med,
                "ratio": ratio,
                "peak_bytes": peaks,
                "extra_peak_feature_maps": extra,
                "all_s": times,
            }
            for arm in runs:
                peak = peaks.get(arm)
                mib = f"{peak / 2**20:9.0f}" if peak is not None else f"{'-':>9}"
                maps = f"{extra[arm]:6.2f}" if extra.get(arm) is not None else f"{'-':>6}"
                print(
                    f"{size:<16} {name:<5} {arm:<13} {1000 * med[arm]:>10.1f} {ratio[arm]:>7.2f} {mib} {maps}",
                    flush=True,
                )
                if (name, arm) in TARGETS:
                    report["targets"][f"{size} {name} {arm}"] = {
                        "ratio": round(ratio[arm], 3),
                        "target": TARGETS[name, arm],
                        "met": ratio[arm] <= TARGETS[name, arm],
                    }
                if arm == "K=4" and extra.get(arm) is not None:
                    report["targets"][f"{size} {name} K=4 extra peak (feature maps)"] = {
                        "value": round(extra[arm], 2),
                        "target": 1.0,
                        "met": extra[arm] <= 1.0,
                    }
        del s, t
    print("\ntargets (ratios from this run):")
    for label, res in report["targets"].items():
        value = res.get("ratio", res.get("value"))
        print(f"  {label:<48} {value:>7} <= {res['target']:<5} {'met' if res['met'] else 'NOT met'}")
    atomic_write_json(args.out, report)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
