"""The `gift` backend: a tiny random checkpoint as generalist and coder. Its code is garbage and
gets dropped; the test checks the plumbing (sampler -> prompts -> sandbox -> drop reasons)."""
import jax
import pandas as pd
import pytest

from gift import checkpoint
from gift import config as gc
from gift.execution.sandbox import Sandbox
from gift.model import presets, transformer
from gift.synth import backends, build, contexts
from gift.synth.templates import Intent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  cfg = presets.get_preset("test_tiny", vocab_size=259)
  path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
  checkpoint.save_model(path, cfg, transformer.init_params(cfg, jax.random.key(0)))
  return path


@pytest.mark.slow  # JAX compiles the sampler: ~30-50 s on 2 cores
def test_gift_backend_samples_n_codes_and_build_counts_their_drops(ckpt):
  be = backends.GiftBackend(ckpt, temperature=1.0, max_tokens=12)
  frame = pd.DataFrame({"x": [1, 2, 3]})
  ctx = contexts.Context("t/x", [("code", "df.head()", "")], contexts.PRELUDE, {"df": frame},
                         "csv", inputs={"df": frame})
  intents = be.intents(ctx, 3, 0)
  assert all(isinstance(i, Intent) for i in intents)  # likely none parse from random text
  fixed = [Intent("t/x", 0, "llm", "Sum x."), Intent("t/x", 1, "llm", "Max x.")]
  codes = be.codes(ctx, fixed, 3, 0)
  assert [len(c) for c in codes] == [3, 3] and all(isinstance(s, str) for c in codes for s in c)

  class Fixed(backends.GiftBackend):
    def intents(self, context, num, seed):
      return fixed

  with Sandbox(num_workers=1, timeout_s=2.0) as sandbox:
    shard = build.process_context(ctx, Fixed(ckpt, sampler=be.sampler, max_tokens=12), sandbox,
                                  gc.finalize(gc.base_config()).synth, 0)
  assert shard["counts"]["candidates"] == 6
  assert sum(shard["drops"].values()) + shard["counts"]["kept"] == 6
