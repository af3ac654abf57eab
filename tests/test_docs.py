"""Docs that are derived from the code stay equal to it."""

from __future__ import annotations

import re
from pathlib import Path

from avatarkd.registry import loss_table

DOCS = Path(__file__).resolve().parent.parent / "docs"
BUILTIN = ["mse", "cwd", "kd", "dkd", "pkd", "l1", "smooth_l1", "maskd", "mgd"]


def test_loss_table_in_the_architecture_doc_is_the_registry():
    text = (DOCS / "architecture.md").read_text()
    found = re.search(r"<!-- loss-table:start -->\n(.*?)\n<!-- loss-table:end -->", text, re.S)
    assert found, "loss-table markers missing from docs/architecture.md"
    assert found.group(1) == loss_table(BUILTIN), "regenerate it: python -c 'from avatarkd.registry import loss_table; print(loss_table())'"
