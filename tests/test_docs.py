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
    assert found.group(1) == loss_table(BUILTIN), (
        "regenerate it: python -c 'from avatarkd.registry import loss_table; print(loss_table())'"
    )


def test_the_data_examples_in_the_readme_are_valid_configs():
    import yaml

    from avatarkd.config import DataConfig, EvalConfig, validate

    readme = (DOCS.parent / "README.md").read_text()
    section = readme[readme.index("## Your data") : readme.index("## Command line")]
    examples = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert examples, "the 'Your data' section has no YAML example"
    blocks = [b for b in re.split(r"(?m)^#.*\n", examples.group(1)) if b.strip()]
    formats = set()
    for block in blocks:
        parsed = yaml.safe_load(block)
        formats.add(validate(DataConfig, parsed["data"]).format)
        validate(EvalConfig, parsed.get("eval", {}))
    assert formats == {"folders", "cityscapes", "voc", "ade20k", "coco", "imagefolder"}  # one example per format
