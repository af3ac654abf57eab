"""Names a user typed: find the one they meant, and the ones they gave twice.

Every "unknown X; did you mean Y?" and "names must be unique" message in avatarkd comes from
here, so the wording and the closeness cut-off are the same for modules, config keys, losses
and points.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, choices: Iterable[str], n: int = 1, cutoff: float = 0.5) -> list[str]:
    """The ``n`` choices that look most like ``name`` (possibly none)."""
    return difflib.get_close_matches(str(name), [str(c) for c in choices if c], n=n, cutoff=cutoff)


def did_you_mean(name: str, choices: Iterable[str], n: int = 1) -> str:
    """``"; did you mean 'x'?"`` or ``""``, ready to append to an error message."""
    close = closest(name, choices, n=n)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def repeated(names: Iterable[str]) -> list[str]:
    """Names that occur more than once, sorted."""
    seen: set[str] = set()
    dupes: set[str] = set()
    for name in names:
        (dupes if name in seen else seen).add(name)
    return sorted(dupes)
