"""Metrics to a JSON-lines file (for scripts and plots) and to TensorBoard (for people)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..atomic import json_safe

log = logging.getLogger(__name__)


def _rows_up_to(path: Path, step: int) -> list[str]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            if json.loads(line).get("step", 0) <= step:
                rows.append(line if line.endswith("\n") else line + "\n")
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return rows


class MetricLogger:
    """Rank 0 writes ``metrics.jsonl`` and TensorBoard events under ``output_dir/tb``."""

    def __init__(self, output_dir: Path, enabled: bool = True, resume_step: int = 0) -> None:
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / "metrics.jsonl"
        kept = _rows_up_to(path, resume_step) if resume_step else []
        self._file = open(path, "w")
        # a resumed run drops what the interrupted one logged after its last checkpoint
        self._file.writelines(kept)
        # a dependency (pyproject.toml), imported here only to keep it off the import time of `avatarkd --help`
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(output_dir / "tb"))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = json_safe({"step": step, **values})
        assert self._file is not None
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self._tb.add_scalar(key, value, step)
        scalars = ", ".join(
            f"{k}={v:.4g}"
            for k, v in values.items()
            if isinstance(v, float) and not k.startswith(("eval/iou/", "distill."))
        )
        log.info("step %d: %s", step, scalars)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
