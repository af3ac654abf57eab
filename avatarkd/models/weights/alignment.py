"""Key alignment: which file tensor goes to which model tensor, by the prefix pair that matches the most.

A ``module.backbone.body.`` file loads into a backbone, a classifier checkpoint's ``features.``
into a ``features``-based extractor, and timm's flattened names (``layer1_0``) into the source
model's (``layer1.0``), without any per-family table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def _splits(key: str, most: int) -> Iterable[tuple[str, str]]:
    """(prefix, rest) pairs of a key; the rest keeps a module name and a tensor name (``bn1.weight``),
    since a bare ``weight`` would match any module's."""
    parts = key.split(".")
    for i in range(min(most, len(parts) - 2) + 1 if len(parts) > 1 else 1):
        yield ".".join(parts[:i]) + ("." if i else ""), ".".join(parts[i:])


def dotted(suffix: str) -> str:
    """timm's flattened names (``layer1_0.conv1``) spelt as the source model's (``layer1.0.conv1``)."""
    head, sep, rest = suffix.partition(".")
    return head.replace("_", ".") + sep + rest


def align(file_keys: Iterable[str], model_keys: Iterable[str]) -> tuple[dict[str, str], str, str]:
    """model key -> file key, by the (drop, add) prefix pair that matches the most model keys; and the pair."""
    file_keys, model_keys = list(file_keys), list(model_keys)
    by_suffix: dict[str, list[str]] = {}
    for key in file_keys:
        for prefix, suffix in _splits(key, 3):
            by_suffix.setdefault(suffix, []).append(prefix)
    votes: Counter[tuple[str, str]] = Counter()
    for key in model_keys:
        seen = set()
        for add, suffix in _splits(key, 2):
            for candidate in dict.fromkeys((suffix, dotted(suffix))):
                for drop in by_suffix.get(candidate, ()):
                    if (drop, add) not in seen:
                        seen.add((drop, add))
                        votes[(drop, add)] += 1
    if not votes:
        return {}, "", ""
    best = max(votes.values())
    drop, add = min((pair for pair, n in votes.items() if n == best), key=lambda p: (len(p[0]) + len(p[1]), p))
    present = set(file_keys)
    mapping = {}
    for key in model_keys:
        if not key.startswith(add):
            continue
        suffix = key[len(add) :]
        for candidate in dict.fromkeys((suffix, dotted(suffix))):
            if drop + candidate in present:
                mapping[key] = drop + candidate
                break
    return mapping, drop, add


__all__ = ["align", "dotted"]
