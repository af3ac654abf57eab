"""Helpers shared by the benchmark scripts: run locks, hashes, test-read overrides, statistics.

The statistics are written out here (no SciPy on the study machines): Student's t distribution
by numerical integration of its density, its quantiles by bisection, the paired 95% t-interval
and the minimal detectable effect of a paired t-test at a given power, computed with the
noncentral t distribution (not the normal approximation, which is too optimistic for n < 10).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch


# ----------------------------------------------------------------------------- test reads
def alone_on_test(run_dir: Path) -> list[str]:
    """Overrides that score a finished run's ``student.pt`` alone on the test split: no teacher, no
    distillation, no ImageNet init over the trained weights, outputs kept in the run's folder."""
    return [
        "distill=null",
        "teacher=null",
        "eval.split=test",
        "model.backbone_weights=null",
        f"model.weights={run_dir / 'student.pt'}",
        f"output_dir={run_dir}",
    ]


# ----------------------------------------------------------------------------- run locks
def claim(lock: Path) -> bool:
    """Take a run for this process (a lock file holding its pid); a dead holder's lock is taken over.

    Two workers may share one grid: each claims a run before training it and skips (or waits for)
    runs another live process holds.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(lock.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError, FileNotFoundError):
            lock.unlink(missing_ok=True)
            return claim(lock)
        except PermissionError:
            return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


# ----------------------------------------------------------------------------- hashes
def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def json_hash(obj: Any) -> str:
    """Hash of a JSON-able object, independent of dict order."""
    return sha256_text(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")))


def tree_hash(root: Path, patterns: Sequence[str] = ("*.py",)) -> str:
    """Hash of every file matching ``patterns`` under ``root`` (relative paths and contents, sorted):
    a finished run is reused only while this is unchanged, so results always come from the code in the tree."""
    h = hashlib.sha256()
    files = sorted({p for pattern in patterns for p in root.rglob(pattern) if "__pycache__" not in p.parts})
    for path in files:
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


# ----------------------------------------------------------------------------- Student's t
def _simpson(y: torch.Tensor, a: float, b: float) -> float:
    """Simpson's rule on samples ``y`` at an odd number of equally spaced points from ``a`` to ``b``."""
    n = y.numel() - 1
    w = torch.ones_like(y)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return float((w * y).sum() * (b - a) / (3 * n))


def _t_pdf(x: torch.Tensor, df: int) -> torch.Tensor:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return torch.exp(log_c - (df + 1) / 2 * torch.log1p(x * x / df))


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom (Simpson on the density, float64)."""
    if x < 0:
        return 1.0 - t_cdf(-x, df)
    grid = torch.linspace(0.0, x, 4001, dtype=torch.float64)
    return 0.5 + _simpson(_t_pdf(grid, df), 0.0, x)


@functools.lru_cache(maxsize=256)
def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t (bisection on :func:`t_cdf`)."""
    if not 0 < q < 1:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_quantile(1 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
    return (lo + hi) / 2


def noncentral_t_sf(c: float, df: int, ncp: float) -> float:
    """P(T' > c) for the noncentral t: T' = (Z + ncp) / sqrt(V / df), V ~ chi2(df).

    P(T' > c) = E_V[ Phi(ncp - c * sqrt(V / df)) ], integrated over the chi-square density after
    substituting V = U^2 (smooth at 0 for every df, including df = 1).
    """
    upper = math.sqrt(df + 40 * math.sqrt(2 * df) + 40)
    u = torch.linspace(0.0, upper, 8001, dtype=torch.float64)[1:]
    log_pdf_v = (df / 2 - 1) * torch.log(u * u) - u * u / 2 - (df / 2) * math.log(2) - math.lgamma(df / 2)
    y = torch.special.ndtr(ncp - c * u / math.sqrt(df)) * torch.exp(log_pdf_v) * 2 * u
    return _simpson(torch.cat([torch.zeros(1, dtype=torch.float64), y]), 0.0, upper)


def paired_power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` for a true mean difference ``effect``."""
    df, c = n - 1, t_quantile(1 - alpha / 2, n - 1)
    ncp = effect / (sd / math.sqrt(n))
    return noncentral_t_sf(c, df, ncp) + noncentral_t_sf(c, df, -ncp)


def mde(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """Minimal detectable effect: the smallest true paired mean difference that the two-sided paired
    t-test at level ``alpha`` detects with probability ``power``, for per-seed differences of standard
    deviation ``sd`` over ``n`` seeds. Solved exactly with the noncentral t (bisection on
    :func:`paired_power`); the familiar approximation ``(t_{1-alpha/2,n-1} + t_{power,n-1}) * sd /
    sqrt(n)`` is close for n >= 10 and too small for n = 3."""
    if n < 2 or sd <= 0:
        return float("nan")
    lo, hi = 0.0, sd
    while paired_power(hi, sd, n, alpha) < power:
        hi *= 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if paired_power(mid, sd, n, alpha) < power else (lo, mid)
    return (lo + hi) / 2


def paired_summary(diffs: Sequence[float]) -> dict[str, Any]:
    """Mean, 95% t-interval, wins (> 0) and the 80%-power MDE of per-seed paired differences."""
    n = len(diffs)
    if n == 0:
        return {"mean": None, "ci95": None, "wins": 0, "n": 0, "sd": None, "mde80": None}
    mean = statistics.mean(diffs)
    if n == 1:
        return {"mean": mean, "ci95": None, "wins": int(diffs[0] > 0), "n": 1, "sd": None, "mde80": None}
    sd = statistics.stdev(diffs)
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    return {
        "mean": mean,
        "ci95": [mean - half, mean + half],
        "wins": sum(d > 0 for d in diffs),
        "n": n,
        "sd": sd,
        "mde80": mde(sd, n) if sd > 0 else 0.0,
    }


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    vals = list(values)
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
