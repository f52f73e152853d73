"""`gift eval` on a LoRA run: a base checkpoint plus adapters with B != 0, stored as `gift train
--config.train.peft=lora` stores them (lora.json naming the base; the step's params are the
adapters). `--lora merge` and `--lora unmerged` sample the same completions and scores; the
unmerged run really samples base + LoraWeight; and the completions are the adapted model's (they
differ from the base checkpoint's, and equal `Sampler.generate` on the LoRA checkpoint)."""
import json
import types

import jax
import pandas as pd
import pytest

from gift import checkpoint, peft_io
from gift import lora as lora_lib
from gift import sample as sample_lib
from gift.data import prompts as prompts_lib
from gift.eval import arcade, cli
from gift.model import presets, transformer

MAX_NEW_TOKENS = 12


def _records():
  base = {"context_id": "csv/sales", "context": "# In[ ]:\nimport pandas as pd\n\n",
          "spec_typedesc": "Inputs:\ndf: DataFrame", "spec_io_examples": "",
          "spec_io_summary": "The output is a Series.", "output_repr": "", "variables": "{}"}
  return [
      dict(base, id="csv/sales/0/0", intent="Total units per region.",
           code="result = df.groupby('region')['units'].sum()",
           meta=json.dumps({"output_var": "result"})),
      dict(base, id="csv/sales/1/0", intent="The number of rows.", code="len(df)",
           meta=json.dumps({"output_var": None})),
  ]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  """(base checkpoint, LoRA checkpoint, ARCADE episodes file)."""
  root = tmp_path_factory.mktemp("evallora")
  cfg = presets.get_preset("test_tiny", vocab_size=259)
  base = str(root / "base")
  checkpoint.save_model(base, cfg, transformer.init_params(cfg, jax.random.key(0)))
  lcfg = lora_lib.LoraConfig(rank=4, alpha=8.0).validate()
  adapters = lora_lib.init_adapters(cfg, lcfg, jax.random.key(1))
  # B != 0, as after training (init_adapters' B = 0 would make the adapted model the base).
  leaves, tree = jax.tree_util.tree_flatten_with_path(adapters)
  adapters = jax.tree.unflatten(tree, [
      0.3 * jax.random.normal(jax.random.key(i), x.shape) if p[-1].key == "b" else x
      for i, (p, x) in enumerate(leaves)])
  run = str(root / "run")
  checkpoint.save_model(run, cfg, adapters)
  peft_io.write_root(run, lcfg, base)
  df = pd.DataFrame({"region": ["n", "s", "n"], "units": [1, 2, 3]})
  ctx = types.SimpleNamespace(code="import pandas as pd\ndf = df.copy()", inputs={"df": df})
  episodes = str(root / "episodes.json")
  arcade.build_episodes(_records(), {"csv/sales": ctx}, episodes)
  return base, run, episodes


def _has_lora_weight(params) -> bool:
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, lora_lib.LoraWeight))
  return any(isinstance(x, lora_lib.LoraWeight) for x in leaves)


def test_eval_lora_run_merged_equals_unmerged(lora_run, tmp_path, monkeypatch):
  base, run, episodes = lora_run
  calls = []  # (sampler has LoraWeight params, prompts, completions) of every generate call
  generate = sample_lib.Sampler.generate

  def spy(self, prompts, **kw):
    out = generate(self, prompts, **kw)
    calls.append((_has_lora_weight(self.params), list(prompts), out))
    return out

  monkeypatch.setattr(sample_lib.Sampler, "generate", spy)

  def evaluate(ckpt, *flags):
    calls.clear()
    work = tmp_path / f"work{len(list(tmp_path.iterdir()))}"
    assert cli.main(["arcade", "--dataset", episodes, "--checkpoint", ckpt, "--max_new_tokens",
                     str(MAX_NEW_TOKENS), "--ks", "1", "--workdir", str(work), "--no_progress",
                     "--num_workers", "1", *flags]) == 0
    (unmerged, prompts, completions), = calls
    results = json.loads((work / "results.json").read_text())
    return unmerged, prompts, completions, results

  merged = evaluate(run, "--lora", "merge")
  unmerged = evaluate(run, "--lora", "unmerged")
  plain = evaluate(base)
  assert not merged[0] and unmerged[0] and not plain[0]  # unmerged really runs LoraWeight
  assert len(merged[1]) == 2 and merged[1] == unmerged[1] == plain[1]
  assert merged[2] == unmerged[2]
  assert merged[3]["runs"] == unmerged[3]["runs"]
  assert merged[3]["settings"]["source"] == run and merged[3]["oracle"]["passed"] == 2
  # The adapters are in the samples: the base alone samples other completions ...
  assert any(c.strip() for c in sum(merged[2], []))
  assert merged[2] != plain[2]
  # ... and they are the LoRA checkpoint's own greedy samples of those prompts.
  direct = sample_lib.Sampler.from_checkpoint(run, merge_lora=False).generate(
      merged[1], max_new_tokens=MAX_NEW_TOKENS, stop=prompts_lib.STOP)
  assert direct == merged[2]


def test_beam_sampler_handler_honours_lora(lora_run):
  """`--runner beam` passes `--lora` to the workers' sampler (it used to always merge)."""
  pytest.importorskip("apache_beam")
  from gift.eval import beam_eval
  _, run, _ = lora_run
  sampling = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS, seed=0)
  ex = (0, ["# In[ ]:\nimport pandas as pd\n"])
  outs = {}
  for lora in ("merge", "unmerged"):
    handler = beam_eval._sampler_handler(run, dict(sampling, lora=lora), prompts_lib.STOP)  # noqa: SLF001
    sampler = handler.load_model()
    assert _has_lora_weight(sampler.params) == (lora == "unmerged")
    outs[lora] = handler.run_inference([ex], sampler)[0].inference
  assert outs["merge"] == outs["unmerged"]
