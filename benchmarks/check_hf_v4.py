"""Do gift's exports load in transformers 4.5x too? Exports every family of
tests/test_hf_families.py (tiny random checkpoints built with this interpreter's transformers)
and loads each in another interpreter that has transformers 4.5x, comparing its logits with
gift's.

  python -m venv --system-site-packages $HOME/venvs/tf457
  $HOME/venvs/tf457/bin/pip install "transformers==4.57.1"
  python benchmarks/check_hf_v4.py --python $HOME/venvs/tf457/bin/python
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

CHECK = r"""
import glob, os, sys
import numpy as np, torch, transformers
print("transformers", transformers.__version__)
bad = 0
for d in sorted(glob.glob(os.path.join(sys.argv[1], "*", ""))):
  fam = os.path.basename(d.rstrip("/"))
  m = transformers.AutoModelForCausalLM.from_pretrained(
      d, attn_implementation="eager", torch_dtype=torch.float32).eval()
  with torch.no_grad():
    got = m(torch.tensor(np.load(d + "../" + fam + ".tokens.npy"))).logits.float().numpy()
  diff = float(np.abs(got - np.load(d + "../" + fam + ".gift.npy")).max())
  bad += diff >= 1e-4
  print(f"| {fam} | {type(m).__name__} | {diff:.1e} |")
sys.exit(1 if bad else 0)
"""


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--python", required=True, help="an interpreter with transformers 4.5x")
  args = p.parse_args()
  import test_hf_families as fams

  from gift import hf
  with tempfile.TemporaryDirectory() as root:
    for fam in sorted(fams.FAMILIES):
      _, path = fams._build(fam, os.path.join(root, "src"))
      cfg, params = hf.import_hf(path)
      hf.export_hf(cfg, params, os.path.join(root, "exp", fam))
      tokens = fams._tokens()
      np.save(os.path.join(root, "exp", f"{fam}.tokens.npy"), tokens)
      np.save(os.path.join(root, "exp", f"{fam}.gift.npy"),
              fams._gift_logits(cfg, params, tokens))
    print("| family | class loaded by the other transformers | max abs logit diff vs gift |")
    print("|---|---|---|")
    sys.stdout.flush()
    return subprocess.run([args.python, "-c", CHECK, os.path.join(root, "exp")]).returncode


if __name__ == "__main__":
  sys.exit(main())
