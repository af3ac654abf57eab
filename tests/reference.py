"""Independent float64 NumPy references for the loss formulas (no torch code shared)."""

from __future__ import annotations

import numpy as np


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray, axis: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=axis)


def mse(s, t):
    return float(((s - t) ** 2).sum() / s.shape[0])


def cwd(s, t, tau=1.0):
    n, c = s.shape[:2]
    total = 0.0
    for i in range(n):
        for j in range(c):
            p = _softmax(t[i, j].ravel() / tau, 0)
            q = _softmax(s[i, j].ravel() / tau, 0)
            total += _kl(p, q, 0)
    return float(total * tau**2 / (n * c))


def kd(s, t, T=4.0):
    p, q = _softmax(t / T, 1), _softmax(s / T, 1)
    return float(_kl(p, q, 1).mean() * T**2)


def dkd(s, t, target, alpha=1.0, beta=8.0, T=4.0):
    n, c = s.shape
    tckd = nckd = 0.0
    for i in range(n):
        ps, pt = _softmax(s[i] / T, 0), _softmax(t[i] / T, 0)
        g = target[i]
        bs = np.array([ps[g], 1 - ps[g]])
        bt = np.array([pt[g], 1 - pt[g]])
        tckd += _kl(bt, bs, 0)
        keep = np.arange(c) != g
        nckd += _kl(_softmax(t[i, keep] / T, 0), _softmax(s[i, keep] / T, 0), 0)
    return float((alpha * tckd + beta * nckd) / n * T**2)


def pkd(s, t, eps=1e-6):
    def norm(x):
        c = x.shape[1]
        flat = np.moveaxis(x, 1, 0).reshape(c, -1)
        z = (flat - flat.mean(1, keepdims=True)) / (flat.std(1, ddof=1, keepdims=True) + eps)  # unbiased, as published
        return z

    return float(((norm(s) - norm(t)) ** 2).mean() / 2)


def l1(s, t):
    return float(np.abs(s - t).mean())


def smooth_l1(s, t, beta=1.0):
    d = np.abs(s - t)
    return float(np.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta).mean())


def maskd(s, t, tokens, weight_logits):
    n, c, h, w = t.shape
    logits = np.einsum("tc,nchw->nthw", tokens, t) / np.sqrt(c)
    m = 1 / (1 + np.exp(-logits))
    sq = ((s - t) ** 2).sum(1)
    wts = _softmax(weight_logits, 0)
    total = 0.0
    for j in range(tokens.shape[0]):
        per = [(m[i, j] * sq[i]).sum() / m[i, j].sum() for i in range(n)]
        total += wts[j] * np.mean(per)
    return float(total)


def dice_penalty(masks):
    """Mean Dice coefficient 2<a,b>/(|a|^2+|b|^2) over every image and ordered pair of different masks."""
    n, t = masks.shape[:2]
    total, pairs = 0.0, 0
    for i in range(n):
        for a in range(t):
            for b in range(t):
                if a == b:
                    continue
                x, y = masks[i, a].ravel(), masks[i, b].ravel()
                total += 2 * (x * y).sum() / ((x * x).sum() + 1e-12 + (y * y).sum() + 1e-12)
                pairs += 1
    return float(total / pairs)


def maskd_published(s, t, masks, image_weights):
    """Per image and token: sum over C, H, W of (m (s - t))^2 / C / sum(m), weighted per image, mean over images."""
    n, c = s.shape[:2]
    total = 0.0
    for i in range(n):
        for j in range(masks.shape[1]):
            m = masks[i, j]
            err = sum(((m * (s[i, k] - t[i, k])) ** 2).sum() for k in range(c)) / c / m.sum()
            total += image_weights[i, j] * err
    return float(total / n)
