"""Input pipeline: loss masks, truncation, packing, determinism and multi-host row assembly."""
import json

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gift import tokenizer as tokenizer_lib
from gift.data import pipeline, prompts

TOK = tokenizer_lib.load(None)


def _jsonl(tmp_path, n=40, seed=0):
  rng = np.random.default_rng(seed)
  path = tmp_path / "train.jsonl"
  with open(path, "w") as f:
    for i in range(n):
      prompt = f"# ex {i}\n" + "p" * int(rng.integers(0, 30))
      completion = f"c{i}=" + "x" * int(rng.integers(1, 25)) + "\n"
      f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
  return str(path)


def _segments(batch):
  """Yields (row, segment id, slot indices) of every packed segment."""
  for r in range(batch["segment_ids"].shape[0]):
    for s in np.unique(batch["segment_ids"][r]):
      if s:
        yield r, s, np.nonzero(batch["segment_ids"][r] == s)[0]


def test_loss_mask_is_on_target_and_eos_only():
  ex = pipeline.tokenize(prompts.Rendered("ctx\n", "# do it\n", "y = 1\n"), TOK, 64)
  assert ex.tokens_n[0] == TOK.bos_id and ex.tokens_n[-1] == TOK.eos_id
  assert TOK.decode(ex.tokens_n[ex.target_n == 1]) == "y = 1\n"
  assert TOK.decode(ex.tokens_n[ex.target_n == 0]) == "ctx\n# do it\n"
  assert ex.target_n[-1] == 1 and ex.target_n[0] == 0


def test_truncation_cuts_context_from_the_left_then_instruction_never_target():
  r = prompts.Rendered("0123456789", "abcdef", "TARGET")
  # 7 target tokens (with EOS): 10 slots leave 3 prompt tokens: the instruction's last 3.
  ex = pipeline.tokenize(r, TOK, 10)
  assert TOK.decode(ex.tokens_n) == "defTARGET" and len(ex.tokens_n) - 1 == 10
  # 16 slots leave 9: the whole instruction and the context's last 3 characters.
  ex = pipeline.tokenize(r, TOK, 16)
  assert TOK.decode(ex.tokens_n) == "789abcdefTARGET"
  ex = pipeline.tokenize(r, TOK, 7)
  assert TOK.decode(ex.tokens_n) == "TARGET" and ex.target_n.sum() == 7
  assert pipeline.tokenize(r, TOK, 6) is None


def test_packed_segments_are_whole_examples_with_correct_masks(tmp_path):
  source = pipeline.JsonlSource(_jsonl(tmp_path))
  by_prompt = dict(source.pairs)
  pipe = pipeline.Pipeline(source, TOK, seq_len=64, global_batch=4, rows=range(4), seed=1)
  for _ in range(5):
    batch, _ = next(pipe)
    pad = batch["segment_ids"] == 0
    assert not batch["loss_mask"][pad].any() and not batch["inputs"][pad].any()
    for r, _, slots in _segments(batch):
      assert slots[0] == 0 or batch["segment_ids"][r, slots[0] - 1] != 0  # contiguous, packed
      np.testing.assert_array_equal(slots, np.arange(slots[0], slots[0] + len(slots)))
      np.testing.assert_array_equal(batch["positions"][r, slots], np.arange(len(slots)))
      inputs, targets = batch["inputs"][r, slots], batch["targets"][r, slots]
      np.testing.assert_array_equal(inputs[1:], targets[:-1])  # never mixed with a neighbour
      assert inputs[0] == TOK.bos_id and targets[-1] == TOK.eos_id
      text = TOK.decode(inputs[1:])
      prompt = next(p for p in by_prompt if text == p + by_prompt[p])
      mask = batch["loss_mask"][r, slots]
      assert TOK.decode(targets[mask == 1]) == by_prompt[prompt]  # every code token and EOS
      assert TOK.decode(targets[mask == 0]) == prompt  # no prompt token is trained


def test_one_epoch_yields_every_example_exactly_once(tmp_path):
  source = pipeline.JsonlSource(_jsonl(tmp_path, n=37))
  pipe = pipeline.Pipeline(source, TOK, seq_len=64, global_batch=3, rows=range(3), seed=2,
                           num_epochs=1)
  seen = []
  while not pipe.exhausted():
    batch, _ = next(pipe)
    for r, _, slots in _segments(batch):
      seen.append(TOK.decode(batch["inputs"][r, slots][1:]).split("\n")[0])
  assert sorted(seen) == sorted(f"# ex {i}" for i in range(37))


def test_too_long_examples_are_dropped_and_counted(tmp_path):
  path = tmp_path / "d.jsonl"
  lines = [{"prompt": "p", "completion": "x" * (100 if i % 3 == 0 else 5)} for i in range(9)]
  path.write_text("".join(json.dumps(x) + "\n" for x in lines))
  pipe = pipeline.Pipeline(pipeline.JsonlSource(str(path)), TOK, seq_len=32, global_batch=2,
                           rows=[0, 1], num_epochs=1)
  kept = 0
  while not pipe.exhausted():
    batch, state = next(pipe)
    kept += len(list(_segments(batch)))
  assert kept == 6 and state["dropped_b"].sum() == 3


def test_batches_after_restoring_state_equal_an_uninterrupted_stream(tmp_path):
  source = pipeline.JsonlSource(_jsonl(tmp_path))
  make = lambda: pipeline.Pipeline(source, TOK, seq_len=48, global_batch=4, rows=range(4), seed=3)
  uninterrupted = make()
  full = [next(uninterrupted) for _ in range(9)]
  first = make()
  for _ in range(4):
    _, state = next(first)
  resumed = make()
  resumed.set_state(state)
  for step in range(4, 9):
    batch, st = next(resumed)
    for k in pipeline.BATCH_KEYS:
      np.testing.assert_array_equal(batch[k], full[step][0][k])
    np.testing.assert_array_equal(st["next_b"], full[step][1]["next_b"])


def test_rows_do_not_depend_on_how_processes_split_the_batch(tmp_path):
  source = pipeline.JsonlSource(_jsonl(tmp_path))
  whole = pipeline.Pipeline(source, TOK, seq_len=48, global_batch=8, rows=range(8), seed=4)
  halves = [pipeline.Pipeline(source, TOK, seq_len=48, global_batch=8, rows=rows, seed=4)
            for rows in (range(0, 4), range(4, 8))]
  for _ in range(3):
    batch, _ = next(whole)
    parts = [next(h)[0] for h in halves]
    for k in pipeline.BATCH_KEYS:
      np.testing.assert_array_equal(batch[k], np.concatenate([p[k] for p in parts]))


def test_spec_mixture_is_deterministic_and_follows_weights():
  choose = pipeline.spec_chooser("mixture", {"none": 0.5, "typedesc": 0.0, "io_summary": 0.5}, 7)
  kinds = [choose(g) for g in range(2000)]
  assert kinds == [choose(g) for g in range(2000)]
  assert set(kinds) == {"none", "io_summary"}
  assert 900 < kinds.count("none") < 1100
  assert pipeline.spec_chooser("typedesc", {}, 0)(5) == "typedesc"


def test_record_source_renders_the_chosen_spec():
  record = {"context": "import pandas as pd\n", "intent": "sum a", "code": "df.a.sum()",
            "spec_typedesc": "TYPEDESC", "spec_io_examples": "EXAMPLES",
            "spec_io_summary": "SUMMARY"}
  choose = pipeline.spec_chooser("mixture", {"typedesc": 1, "io_summary": 1}, 0)
  source = pipeline.RecordSource([record], choose)
  for g in range(20):
    rendered = source.get(0, g)
    shown = "TYPEDESC" if choose(g) == "typedesc" else "SUMMARY"
    assert shown in rendered.prompt and rendered.target == "df.a.sum()\n"


def test_jsonl_errors_name_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: .*'completion'"):
    pipeline.JsonlSource(str(path))


def test_global_assembly_and_state_round_trip_over_the_mesh(tmp_path):
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"))
  sharding = NamedSharding(mesh, P(("data", "fsdp"), None))
  rows = pipeline.local_rows(sharding, 8, 32)
  assert rows == list(range(8))  # one process holds all rows
  pipe = pipeline.Pipeline(pipeline.JsonlSource(_jsonl(tmp_path)), TOK, 32, 8, rows)
  batch, state = next(pipe)
  arrays = pipeline.to_global(batch, sharding, 8)
  np.testing.assert_array_equal(np.asarray(arrays["inputs"]), batch["inputs"])
  assert arrays["inputs"].sharding == sharding
  state_arrays = pipeline.to_global(state, sharding, 8)
  back = pipeline.local_state(state_arrays, rows)
  np.testing.assert_array_equal(back["next_b"], state["next_b"])


def test_prefetch_keeps_order_and_reraises():
  assert list(pipeline.prefetch(iter(range(10)), 3)) == list(range(10))

  def broken():
    yield 1
    raise RuntimeError("boom")
  with pytest.raises(RuntimeError, match="boom"):
    list(pipeline.prefetch(broken(), 2))


def test_tfds_records_source_from_config(tmp_path):
  from gift import config as gc
  from gift.data import records
  recs = [{"id": f"c/{i}", "context_id": "c", "context": "# In[ ]:\nimport pandas as pd\n\n",
           "intent": f"intent {i}", "code": f"df.col{i}.sum()", "spec_typedesc": "TD",
           "spec_io_examples": "IOE", "spec_io_summary": "IOS", "output_repr": "1",
           "variables": "{}", "meta": "{}"} for i in range(6)]
  records.write({"train": recs, "validation": recs[:2]}, str(tmp_path), {})
  cfg, _ = gc.parse_args([f"--config.data.path={tmp_path}", "--config.data.spec_kind=typedesc"])
  source = pipeline.make_source(cfg.data, "train", seed=0)
  assert len(source) == 6 and len(pipeline.make_source(cfg.data, "eval", seed=0)) == 2
  batch, _ = next(pipeline.Pipeline(source, TOK, 256, 2, [0, 1], seed=0))
  text = TOK.decode(batch["inputs"][0])
  assert "# Specification (variable types):\n# TD" in text and "import pandas" in text
  trained = TOK.decode(batch["targets"][0][batch["loss_mask"][0] == 1])
  assert trained.startswith("df.col") and ".sum()\n" in trained
