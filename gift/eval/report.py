"""Evaluation reports: `results.json`, `report.md` (tables) and PNG plots, written atomically.

`results` (what `gift eval` produces; every report has the same keys):

  benchmark: str                       e.g. "ds1000-pandas" or "arcade:<file>"
  runtime: RuntimeInfo.to_dict()       the interpreter and versions that executed candidates
  oracle: {passed, total, rate}        the references' own score under that runtime
  settings: {...}                      source (answers file / checkpoint), n, temperature, ...
  runs: {spec_kind: {pass_at_k: {group: {k: value}}, per_problem: {id: [n, c]}}}
  timing: {wall_s, sampling_s, execution_s, problems, problems_per_s}

Groups are "all" plus the benchmark's breakdown (DS-1000: perturbation type).
"""
from __future__ import annotations

import json
import os
from typing import Any

PLOT_KS = (1, 5, 10, 20, 50, 100)


def _atomic_write(path: str, data: bytes) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def _pct(v: float | None) -> str:
  return "-" if v is None else f"{100 * v:.1f}"


def markdown(results: dict[str, Any]) -> str:
  """The report's text: headline, runtime and oracle, pass@k tables by spec kind and group."""
  rt, orc, tm = results["runtime"], results["oracle"], results["timing"]
  pkgs = ", ".join(f"{k} {v}" for k, v in rt.get("packages", {}).items())
  lines = [f"# Evaluation: {results['benchmark']}", "",
           f"- runtime: python {rt.get('python_version', '?')} ({rt.get('python', '?')}); {pkgs}"
           + (f"; preset {rt['preset']}" if rt.get("preset") else ""),
           f"- oracle (reference solutions): {orc['passed']}/{orc['total']} = "
           f"{_pct(orc['rate'])}%",
           "- settings: " + ", ".join(f"{k}={v}" for k, v in results["settings"].items()),
           f"- run time: {tm['wall_s']:.1f} s (sampling {tm.get('sampling_s', 0):.1f} s, "
           f"execution {tm.get('execution_s', 0):.1f} s); {tm['problems']} problems, "
           f"{tm['problems_per_s']:.2f} problems/s", ""]
  runs = results["runs"]
  ks = sorted({int(k) for r in runs.values() for g in r["pass_at_k"].values() for k in g})
  lines += ["## pass@k (%) by spec kind", "",
            "| spec kind | " + " | ".join(f"pass@{k}" for k in ks) + " |",
            "|---|" + "---|" * len(ks)]
  for kind, r in runs.items():
    all_ = r["pass_at_k"]["all"]
    lines.append(f"| {kind} | " + " | ".join(_pct(all_.get(str(k))) for k in ks)
                 + " |")
  for kind, r in runs.items():
    groups = r["pass_at_k"]
    counts = r.get("group_sizes", {})
    lines += ["", f"## {kind}: pass@k (%) by group", "",
              "| group | problems | " + " | ".join(f"pass@{k}" for k in ks) + " |",
              "|---|---|" + "---|" * len(ks)]
    for g, vals in groups.items():
      lines.append(f"| {g} | {counts.get(g, '')} | "
                   + " | ".join(_pct(vals.get(str(k))) for k in ks) + " |")
  if results.get("notes"):
    lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
  lines += ["", "Plots: `pass_at_k.png` (pass@k curves per spec kind), `spec_kinds.png` "
            "(pass@1 per spec kind and group).", ""]
  return "\n".join(lines)


def plots(results: dict[str, Any], workdir: str) -> list[str]:
  """pass@k curves per spec kind and pass@1 bars per spec kind and group; returns the paths."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from gift.eval import passk

  runs, paths = results["runs"], []
  fig, ax = plt.subplots(figsize=(6, 4))
  for kind, r in runs.items():
    nc = list(r["per_problem"].values())
    ks = [k for k in PLOT_KS if k <= min(n for n, _ in nc)] or [1]
    curve = passk.mean_pass_at_k(nc, ks)
    ax.plot(list(curve), [100 * v for v in curve.values()], marker="o", label=kind)
  ax.set(xlabel="k", ylabel="pass@k (%)", title=f"{results['benchmark']}: pass@k", xscale="log")
  ax.legend()
  ax.grid(alpha=0.3)
  paths.append(save_png(fig, os.path.join(workdir, "pass_at_k.png")))
  plt.close(fig)

  groups = list(next(iter(runs.values()))["pass_at_k"])
  fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(groups)), 4))
  width = 0.8 / max(1, len(runs))
  for i, (kind, r) in enumerate(runs.items()):
    vals = [100 * r["pass_at_k"].get(g, {}).get("1", 0.0)
            for g in groups]
    ax.bar([j + i * width for j in range(len(groups))], vals, width, label=kind)
  ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(groups))], groups)
  ax.set(ylabel="pass@1 (%)", title=f"{results['benchmark']}: pass@1 by spec kind")
  ax.legend()
  paths.append(save_png(fig, os.path.join(workdir, "spec_kinds.png")))
  plt.close(fig)
  return paths


def save_png(fig: Any, path: str) -> str:
  """Writes a matplotlib figure to `path` atomically (temp file, then rename); returns path."""
  tmp = f"{path}.tmp{os.getpid()}.png"
  fig.savefig(tmp, dpi=100, bbox_inches="tight")
  os.replace(tmp, path)
  return path


def write(results: dict[str, Any], workdir: str) -> dict[str, str]:
  """Writes results.json, report.md and the plots into `workdir`; returns name -> path."""
  os.makedirs(workdir, exist_ok=True)
  out = {"results": os.path.join(workdir, "results.json"),
         "report": os.path.join(workdir, "report.md")}
  _atomic_write(out["results"], json.dumps(results, indent=1, default=str).encode())
  _atomic_write(out["report"], markdown(results).encode())
  for p in plots(results, workdir):
    out[os.path.basename(p).removesuffix(".png")] = p
  return out


def run_entry(passed: dict[Any, list[bool]], groups: dict[Any, str],
              ks: tuple[int, ...] = (1, 5, 20)) -> dict[str, Any]:
  """One `runs[spec_kind]` entry from per-problem pass flags (JSON keys are strings)."""
  from gift.eval import passk

  flags = {str(k): v for k, v in passed.items()}
  grp = {str(k): v for k, v in groups.items()}
  table = passk.by_group(flags, grp, ks)
  sizes: dict[str, int] = {"all": len(flags)}
  for pid in flags:
    sizes[grp[pid]] = sizes.get(grp[pid], 0) + 1
  return {"pass_at_k": {g: {str(k): v for k, v in t.items()} for g, t in table.items()},
          "group_sizes": sizes,
          "per_problem": {pid: [len(f), int(sum(f))] for pid, f in flags.items()}}
