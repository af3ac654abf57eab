"""Forward+backward cost of each base loss vs its AKD version, side by side in one run.

Arms per loss: ``base`` (the plain function/module), ``ref`` (reference-compatible AKD: K=1,
dropout 0.1, uncertainty ``batchnorm``) and AKD with K = 1, 4, 8 (dropout 0.1, uncertainty
``variance``). Each timed call draws its avatars, as in training. Calls are interleaved
round-robin over arms so that noise hits all alike; the table shows medians and the ratio to
``base`` from the same run, plus the RSS growth of one call (CPU) or CUDA's allocator peak.

    python benchmarks/loss_overhead.py                       # FPN 2x256x100x152, seg 2x2048x64x128
    python benchmarks/loss_overhead.py --repeats 9 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avatarkd import AvatarLoss, losses  # noqa: E402
from benchmarks._timing import RssPeak  # noqa: E402

SHAPES = {"fpn": (2, 256, 100, 152), "seg": (2, 2048, 64, 128)}


def base_losses(shape: tuple[int, ...], device: str) -> dict[str, Any]:
    fns: dict[str, Any] = {"mse": losses.mse, "cwd": losses.cwd, "pkd": losses.pkd, "l1": losses.l1}
    if shape[1] <= 256:  # MGD's two 3x3 convs at 2048 channels would dwarf everything else
        fns["mgd"] = losses.MGD(shape[1]).to(device)
    return fns


def arms(base: Any) -> dict[str, Any]:
    out = {"base": base, "ref": AvatarLoss(base, num_avatars=1, p=0.1, uncertainty="batchnorm")}
    for k in (1, 4, 8):
        out[f"K={k}"] = AvatarLoss(base, num_avatars=k, p=0.1, uncertainty="variance")
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(fn: Any, s: torch.Tensor, t: torch.Tensor, device: str) -> float:
    s.grad = None
    _sync(device)
    t0 = time.perf_counter()
    fn(s, t).backward()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "loss_overhead.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    report: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "device": args.device, "repeats": args.repeats,
                              "command": " ".join(sys.argv), "results": {}}
    print(f"forward+backward per call, {args.device}, {report['threads']} threads, median of {args.repeats} (interleaved)")
    print(f"{'tensor':<22} {'loss':<5} {'arm':<5} {'median ms':>10} {'x base':>7} {'peak MiB':>9}")
    for size in args.sizes:
        shape = SHAPES[size]
        s = torch.randn(shape, device=args.device, requires_grad=True)
        t = torch.randn(shape, device=args.device).relu()  # teacher features are post-ReLU-like
        for name, base in base_losses(shape, args.device).items():
            fns = arms(base)
            for fn in fns.values():  # warm-up (and initialise the running estimates)
                measure(fn, s, t, args.device)
            times: dict[str, list[float]] = {a: [] for a in fns}
            for _ in range(args.repeats):
                for arm, fn in fns.items():
                    times[arm].append(measure(fn, s, t, args.device))
            peaks = {}
            for arm, fn in fns.items():
                if args.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                with RssPeak() as rss:
                    measure(fn, s, t, args.device)
                peaks[arm] = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else rss.mib
            med = {a: statistics.median(v) for a, v in times.items()}
            report["results"].setdefault(size, {})[name] = {
                "shape": list(shape), "median_s": med, "ratio_to_base": {a: med[a] / med["base"] for a in med},
                "peak_mib": peaks, "all_s": times}
            for arm in fns:
                print(f"{'x'.join(map(str, shape)):<22} {name:<5} {arm:<5} {1000 * med[arm]:>10.1f} "
                      f"{med[arm] / med['base']:>7.2f} {peaks[arm]:>9.0f}", flush=True)
        del s, t
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
