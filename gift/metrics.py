"""Training metrics: throughput and MFU arithmetic, and the writer (TensorBoard + metrics.jsonl).

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step, e.g.
  {"step": 20, "loss": 2.31, "lr": 3e-4, "grad_norm": 0.9, "step_time_s": 0.12,
   "tokens_per_s_per_device": 1066.7, "tflops_per_s_per_device": 0.0021, "mfu": null, ...}
`mfu` is null where the device's peak is unknown (e.g. a CPU), never a guessed figure. After a
restart the file is appended to, so a resumed run logs some steps twice (with equal values).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

JSONL = "metrics.jsonl"
TB_DIR = "tensorboard"


def throughput(step_time_s: float, tokens_per_step: int, flops_per_token: float,
               num_devices: int, peak_flops_per_device: float | None) -> dict[str, float | None]:
  """Per-device tokens/s, TFLOP/s and MFU of one training step.

  `tokens_per_step` counts every slot of the global batch (padding included, as the hardware
  computes it); `flops_per_token` is the analytic training cost (6N + attention, see
  `gift/flops.py`).
  """
  tokens_per_s = tokens_per_step / step_time_s / num_devices
  flops_per_s = tokens_per_s * flops_per_token
  return {"tokens_per_s_per_device": tokens_per_s,
          "tflops_per_s_per_device": flops_per_s / 1e12,
          "mfu": flops_per_s / peak_flops_per_device if peak_flops_per_device else None}


def _json_value(v: Any) -> Any:
  v = v.item() if hasattr(v, "item") else v
  return None if isinstance(v, float) and not math.isfinite(v) else v


class MetricsWriter:
  """Appends metrics to `<workdir>/metrics.jsonl` and TensorBoard event files (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, JSONL)
    _drop_partial_last_line(self.path)
    self._jsonl = open(self.path, "a", encoding="utf-8")
    from tensorboardX import SummaryWriter
    self._tb = SummaryWriter(os.path.join(workdir, TB_DIR))

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> None:
    """Logs `metrics` at `step`; keys get `prefix` (e.g. "eval_"); None values skip TensorBoard."""
    if not self.enabled:
      return
    row = {"step": int(step), **{prefix + k: _json_value(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
        self._tb.add_scalar(k, v, int(step))

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _drop_partial_last_line(path: str) -> None:
  """A run killed mid-write may leave half a line: cut it so every line stays valid JSON."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    data = f.read()
    if data and not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """All rows of a metrics.jsonl."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
