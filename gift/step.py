"""Loss, optimizer and the jitted train/eval steps.

Batch (dict of [B, T] arrays): `inputs` int32, `targets` int32, `loss_mask` float32 (1 on code
tokens and EOS), `positions` int32 (per segment, from 0), `segment_ids` int32 (0 = padding).

The loss is carried as (sum of masked token cross-entropies, sum of the mask) so that gradient
accumulation normalizes exactly: grads = sum over microbatches of d(loss_sum) / total weight,
identical to one large batch.

  optimizer = make_optimizer(cfg.train)
  params, opt_state = init_train_state(model_cfg, optimizer, seed, mesh)   # born sharded
  train_step = make_train_step(model_cfg, optimizer, grad_accum=cfg.train.grad_accum, mesh=mesh)
  params, opt_state, metrics = train_step(params, opt_state, batch)        # params donated
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gift import sharding
from gift.model import transformer
from gift.model.presets import ModelConfig

Batch = Mapping[str, jax.Array]
BATCH_KEYS = ("inputs", "targets", "loss_mask", "positions", "segment_ids")


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------
def loss_terms(cfg: ModelConfig, params: Any, batch: Batch) -> tuple[jax.Array, jax.Array]:
  """(sum of loss_mask-weighted cross-entropies, sum of loss_mask), both float32 scalars.

  Cross-entropy = logsumexp(logits) - logits[target], in float32; no [B, T, V] one-hot is built.
  Fine-tuning puts the loss on the code only, often a small part of each row (~10% in the
  quickstart): when every row's loss positions fit in K = T / 4 slots, the unembedding and the
  softmax run on those K positions per row only (the same sum: the other positions weigh 0);
  otherwise on all T. Both branches are compiled; `lax.cond` runs one.
  """
  mask_bt = batch["loss_mask"].astype(jnp.float32)
  k = mask_bt.shape[1] // 4
  # The hidden states once; the unembedding (+ softmax) on K or on T positions per row.
  x_btd, _ = transformer.apply(cfg, params, batch["inputs"], batch["positions"],
                               batch["segment_ids"], hidden=True)

  def sparse(x_btd):
    # Each row's loss positions first (stable: in order), then padding positions of weight 0.
    at_bk = jnp.argsort(-mask_bt, axis=1, stable=True)[:, :k].astype(jnp.int32)
    take = lambda a_bt: jnp.take_along_axis(a_bt, at_bk, axis=1)
    return _masked_xent(transformer.unembed(cfg, params, jnp.take_along_axis(
        x_btd, at_bk[..., None], axis=1)), take(batch["targets"]), take(mask_bt))

  def dense(x_btd):
    return _masked_xent(transformer.unembed(cfg, params, x_btd), batch["targets"], mask_bt)

  if k < 16:  # short rows: nothing worth saving
    return dense(x_btd), jnp.sum(mask_bt)
  fits = jnp.max(jnp.sum(mask_bt > 0, axis=1)) <= k
  return jax.lax.cond(fits, sparse, dense, x_btd), jnp.sum(mask_bt)


def _masked_xent(logits_btv: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
  target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
  xent_bt = jax.nn.logsumexp(logits_btv, axis=-1) - target_logit_bt
  return jnp.sum(xent_bt * mask_bt)


# ------------------------------------------------------------------------------------------------
# Optimizer
# ------------------------------------------------------------------------------------------------
def make_schedule(train_cfg) -> Callable[[jax.Array], jax.Array]:
  """Learning rate by step (0-based): linear warmup to `lr` over `warmup_steps` (step s uses
  lr * (s + 1) / warmup_steps, so the first step already learns), then `schedule` = cosine |
  linear | constant decay to `end_lr_ratio * lr` at `num_steps`."""
  peak, warmup, total = train_cfg.lr, train_cfg.warmup_steps, train_cfg.num_steps
  end = train_cfg.end_lr_ratio * peak
  kind = train_cfg.schedule
  if kind not in ("cosine", "linear", "constant"):
    raise ValueError(f"train.schedule={kind!r}; expected cosine, linear or constant")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * jnp.minimum(1.0, (step + 1.0) / max(warmup, 1))
    progress = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
    if kind == "cosine":
      decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    elif kind == "linear":
      decayed = peak + (end - peak) * progress
    else:
      decayed = jnp.asarray(peak, jnp.float32)
    return jnp.where(step < warmup, warm, decayed)

  return schedule


def decay_mask(params: Any) -> Any:
  """Weight decay on every matrix (projections and embeddings, as Hugging Face's Trainer does),
  not on RMSNorm scales: decaying a Gemma (1 + w) scale would pull it toward 1 + 0, not 0."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any("norm" in str(getattr(k, "key", "")) for k in path), params)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  """Global-norm clipping (when grad_clip > 0), then AdamW on `make_schedule`. The current
  learning rate is kept in the state (`optax.inject_hyperparams`) for logging."""
  adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
      learning_rate=make_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2,
      eps=train_cfg.eps, weight_decay=train_cfg.weight_decay, mask=decay_mask)
  if train_cfg.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), adamw)
  return adamw


def current_lr(opt_state: Any) -> jax.Array:
  """The learning rate used by the latest update."""
  return optax.tree_utils.tree_get(opt_state, "hyperparams")["learning_rate"]


# ------------------------------------------------------------------------------------------------
# State and steps
# ------------------------------------------------------------------------------------------------
def state_shardings(model_cfg: ModelConfig, optimizer, mesh: Mesh) -> tuple[Any, Any]:
  """(param shardings, optimizer-state shardings) by the rules table."""
  p_sh = sharding.param_shardings(model_cfg, mesh)
  return p_sh, sharding.opt_state_shardings(optimizer, transformer.abstract_params(model_cfg),
                                            p_sh, mesh)


def init_train_state(model_cfg: ModelConfig, optimizer, seed: int,
                     mesh: Mesh | None = None) -> tuple[Any, Any]:
  """Random parameters and fresh optimizer state, created directly in their shardings."""
  def init(rng):
    params = transformer.init_params(model_cfg, rng)
    return params, optimizer.init(params)

  out_shardings = None if mesh is None else state_shardings(model_cfg, optimizer, mesh)
  return jax.jit(init, out_shardings=out_shardings)(jax.random.key(seed))


def _microbatches(batch: Batch, grad_accum: int, mesh: Mesh | None) -> Batch:
  """[B, ...] -> [A, B/A, ...] where microbatch a holds rows a, a + A, ...: each device keeps
  its own rows (the batch is split over devices in contiguous blocks), so no data moves."""
  def split(x):
    b = x.shape[0]
    x = jnp.swapaxes(x.reshape(b // grad_accum, grad_accum, *x.shape[1:]), 0, 1)
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, sharding.RULES["batch"])))
    return x
  return {k: split(batch[k]) for k in BATCH_KEYS}


def make_train_step(model_cfg: ModelConfig, optimizer, *, grad_accum: int = 1,
                    mesh: Mesh | None = None) -> Callable:
  """Returns the jitted `step(params, opt_state, batch) -> (params, opt_state, metrics)`.

  params and opt_state are donated. With a mesh, inputs and outputs are pinned to the rules'
  shardings and the batch to ("data", "fsdp"). metrics (float32 scalars): `loss` (mean masked
  cross-entropy), `grad_norm` (global norm before clipping), `lr` (used by this update),
  `num_tokens` (sum of loss_mask: the tokens trained on).
  """
  grad_fn = jax.value_and_grad(lambda p, mb: loss_terms(model_cfg, p, mb), has_aux=True)

  def step(params, opt_state, batch):
    if grad_accum == 1:
      (loss_sum, weight), grads = grad_fn(params, batch)
    else:
      def accumulate(carry, mb):
        g_acc, l_acc, w_acc = carry
        (l, w), g = grad_fn(params, mb)
        return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, w_acc + w), None

      zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32),
               jnp.zeros((), jnp.float32))
      (grads, loss_sum, weight), _ = jax.lax.scan(
          accumulate, zeros, _microbatches(batch, grad_accum, mesh))
    denom = jnp.maximum(weight, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = dict(loss=loss_sum / denom, grad_norm=optax.global_norm(grads),
                   lr=jnp.asarray(current_lr(opt_state), jnp.float32), num_tokens=weight)
    return params, opt_state, metrics

  if mesh is None:
    return jax.jit(step, donate_argnums=(0, 1))
  p_sh, o_sh = state_shardings(model_cfg, optimizer, mesh)
  return jax.jit(step, donate_argnums=(0, 1),
                 in_shardings=(p_sh, o_sh, sharding.batch_sharding(mesh)),
                 out_shardings=(p_sh, o_sh, sharding.replicated(mesh)))


def make_eval_step(model_cfg: ModelConfig, mesh: Mesh | None = None) -> Callable:
  """Returns jitted `eval_step(params, batch) -> {"loss_sum", "weight"}`; the eval loss over
  several batches is sum(loss_sum) / sum(weight)."""
  def eval_step(params, batch):
    loss_sum, weight = loss_terms(model_cfg, params, batch)
    return dict(loss_sum=loss_sum, weight=weight)

  if mesh is None:
    return jax.jit(eval_step)
  return jax.jit(eval_step, in_shardings=(sharding.param_shardings(model_cfg, mesh),
                                          sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))
