"""Loss, schedule, optimizer, and the train step: sharded == single device, accumulation exact."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gift import config as gc
from gift import sharding, step
from gift.model import presets
from gift.model import transformer as tr

TINY = presets.get_preset("test_tiny")  # N=4, K=2, D=64, F=128, V=512, untied, f32


def _train_cfg(**kw):
  c = gc.base_config().train
  with c.unlocked():
    c.update({**dict(lr=1e-2, warmup_steps=2, num_steps=10), **kw})
  return c


def _batch(b=8, t=16, seed=0):
  """Packed rows with padding and a ragged loss mask, so per-microbatch weights differ."""
  rng = np.random.default_rng(seed)
  segments = np.ones((b, t), np.int32)
  positions = np.tile(np.arange(t, dtype=np.int32), (b, 1))
  for r in range(b):
    cut, pad = rng.integers(3, t - 4), rng.integers(0, 4)
    segments[r, cut:] = 2
    positions[r, cut:] = np.arange(t - cut)
    if pad:
      segments[r, -pad:] = 0
      positions[r, -pad:] = 0
  loss_mask = (rng.random((b, t)) < 0.6).astype(np.float32) * (segments > 0)
  return dict(inputs=rng.integers(0, 512, (b, t)).astype(np.int32),
              targets=rng.integers(0, 512, (b, t)).astype(np.int32),
              loss_mask=loss_mask, positions=positions, segment_ids=segments)


def _rel_close(a, b, tol=1e-5):
  """||a - b|| <= tol * ||b|| (Frobenius), i.e. relative error of the whole tensor."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  err, scale = np.linalg.norm(a - b), max(np.linalg.norm(b), 1e-12)
  assert err <= tol * scale, (err, scale)


def test_loss_terms_match_a_log_softmax_reference():
  params = tr.init_params(TINY, jax.random.key(0))
  batch = _batch(2, 8)
  loss_sum, weight = step.loss_terms(TINY, params, batch)
  logits, _ = tr.apply(TINY, params, batch["inputs"], batch["positions"], batch["segment_ids"])
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
  nll = -np.take_along_axis(np.asarray(logp), batch["targets"][..., None], -1)[..., 0]
  np.testing.assert_allclose(loss_sum, np.sum(nll * batch["loss_mask"]), rtol=1e-5)
  assert float(weight) == batch["loss_mask"].sum()


@pytest.mark.parametrize("fraction", [0.1, 0.6])  # loss positions fit in T / 4, or do not
def test_loss_on_the_target_positions_only_equals_the_full_loss_and_its_gradient(fraction):
  """Rows of T >= 64 compute logits only at each row's loss positions when they fit in T / 4
  (else at every position): the loss and its gradient equal the all-positions reference."""
  params = tr.init_params(TINY, jax.random.key(1))
  batch = _batch(4, 64, seed=3)
  rng = np.random.default_rng(4)
  batch["loss_mask"] = ((rng.random((4, 64)) < fraction) * (batch["segment_ids"] > 0)
                        ).astype(np.float32)
  assert (batch["loss_mask"].sum(1).max() <= 16) == (fraction < 0.5)

  def reference(p):
    logits, _ = tr.apply(TINY, p, batch["inputs"], batch["positions"], batch["segment_ids"])
    nll = (jax.nn.logsumexp(logits, -1)
           - np.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0])
    return (nll * batch["loss_mask"]).sum()

  got, grads = jax.value_and_grad(lambda p: step.loss_terms(TINY, p, batch)[0])(params)
  want, want_grads = jax.value_and_grad(reference)(params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(lambda a, b: _rel_close(a, b, 1e-4), grads, want_grads)


def test_schedule_warms_up_then_decays_to_end_ratio():
  for kind in ("cosine", "linear", "constant"):
    sched = step.make_schedule(_train_cfg(schedule=kind, end_lr_ratio=0.1))
    np.testing.assert_allclose([sched(0), sched(1), sched(2)], [5e-3, 1e-2, 1e-2], rtol=1e-6)
    np.testing.assert_allclose(sched(10), 1e-2 if kind == "constant" else 1e-3, rtol=1e-5)
  cosine = step.make_schedule(_train_cfg(end_lr_ratio=0.0))
  np.testing.assert_allclose(cosine(6), 0.5e-2, rtol=1e-5)  # halfway through the decay
  with pytest.raises(ValueError, match="train.schedule"):
    step.make_schedule(_train_cfg(schedule="step"))


def test_weight_decay_skips_norm_scales():
  mask = step.decay_mask(tr.abstract_params(TINY))
  assert mask["layers"]["attn_norm"]["scale"] is False
  assert mask["final_norm"]["scale"] is False
  assert mask["layers"]["attn"]["q"] is True and mask["embedder"]["embedding"] is True


EXPECTED_222 = {  # the rules on a (data=2, fsdp=2, tensor=2) mesh, by hand
    "embedder/embedding": P("tensor", "fsdp"), "unembed": P("fsdp", "tensor"),
    "layers/attn/q": P(None, "fsdp", "tensor", None),
    "layers/attn/k": P(None, "fsdp", "tensor", None),
    "layers/attn/v": P(None, "fsdp", "tensor", None),
    "layers/attn/o": P(None, "tensor", None, "fsdp"),
    "layers/mlp/gate": P(None, "fsdp", "tensor"), "layers/mlp/up": P(None, "fsdp", "tensor"),
    "layers/mlp/down": P(None, "tensor", "fsdp"),
    "layers/attn_norm/scale": P(None, None), "layers/mlp_norm/scale": P(None, None),
    "final_norm/scale": P(None),
}


@pytest.fixture(scope="module")
def single_device_run():
  """Two single-device steps without accumulation: the reference the other runs must equal."""
  optimizer = step.make_optimizer(_train_cfg())
  train_step = step.make_train_step(TINY, optimizer)
  state = jax.device_put(step.init_train_state(TINY, optimizer, 0), jax.devices()[0])
  init_params = jax.tree.map(np.asarray, state[0])
  metrics = []
  for seed in range(2):
    *state, m = train_step(*state, _batch(seed=seed))
    metrics.append(m)
  return dict(optimizer=optimizer, train_step=train_step, init_params=init_params,
              params=state[0], opt_state=state[1], metrics=metrics)


def _run(optimizer, grad_accum, mesh=None):
  train_step = step.make_train_step(TINY, optimizer, grad_accum=grad_accum, mesh=mesh)
  state = step.init_train_state(TINY, optimizer, 0, mesh)
  metrics = []
  for seed in range(2):
    *state, m = train_step(*state, _batch(seed=seed))
    metrics.append(m)
  return state, metrics


def _assert_same_run(got_state, got_metrics, ref):
  for got, want in zip(got_metrics, ref["metrics"]):
    for k in ("loss", "grad_norm", "lr", "num_tokens"):
      _rel_close(got[k], want[k])
  _rel_close_tree(got_state[0], ref["params"])
  # Adam's moments square the gradients' reduction-order noise; 1e-4 still catches any real bug.
  _rel_close_tree(got_state[1], ref["opt_state"], 1e-4)


def _rel_close_tree(a, b, tol=1e-5):
  jax.tree.map(lambda x, y: _rel_close(x, y, tol), a, b)


def _assert_rule_shardings(params, mesh):
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    name = "/".join(k.key for k in path)
    assert x.sharding.spec == EXPECTED_222[name], name
    assert x.sharding.mesh.shape == mesh.shape


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_sharded_step_equals_single_device_step(single_device_run, grad_accum):
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  optimizer = single_device_run["optimizer"]
  params, _ = step.init_train_state(TINY, optimizer, 0, mesh)
  _assert_rule_shardings(params, mesh)  # born sharded by the rules
  jax.tree.map(np.testing.assert_array_equal, params, single_device_run["init_params"])
  state, metrics = _run(optimizer, grad_accum, mesh)
  _assert_same_run(state, metrics, single_device_run)
  _assert_rule_shardings(state[0], mesh)


def test_four_accumulated_microbatches_equal_one_large_batch(single_device_run):
  batch = _batch(seed=0)
  weights = batch["loss_mask"].reshape(2, 4, -1).swapaxes(0, 1).sum((1, 2))
  assert len(set(weights.tolist())) > 1  # unequal microbatch weights: a mean of means would differ
  state, metrics = _run(single_device_run["optimizer"], 4)
  _assert_same_run(state, metrics, single_device_run)


def test_eval_step_loss_ignores_masked_tokens():
  params = tr.init_params(TINY, jax.random.key(1))
  batch = _batch(4, 16, seed=4)
  out = step.make_eval_step(TINY)(params, batch)
  other = dict(batch, targets=np.where(batch["loss_mask"] > 0, batch["targets"], 7))
  out2 = step.make_eval_step(TINY)(params, other)
  np.testing.assert_allclose(out2["loss_sum"], out["loss_sum"], rtol=1e-6)
  assert float(out["weight"]) == batch["loss_mask"].sum()
