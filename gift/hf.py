"""Hugging Face decoder checkpoints <-> gift (`ModelConfig`, params pure dict).

One table per architecture (`ARCHS`): how its `config.json` maps to `ModelConfig` fields (every
key is read, known to be harmless, or refused by name: a key gift ignored could change the
math), the HF tensor name of every gift parameter, and the config it writes back. Supported:
LlamaForCausalLM (incl. Llama 3.1 `llama3` RoPE, DeepSeek-Coder's `linear`, `yarn`),
MistralForCausalLM (sliding window), Qwen2ForCausalLM (q/k/v biases), Qwen3ForCausalLM (q/k
norms), GemmaForCausalLM, Gemma2ForCausalLM (soft-capping, sandwich norms, alternating sliding
layers), Gemma3ForCausalLM and the text tower of Gemma3ForConditionalGeneration (q/k norms, local
and global RoPE bases), Starcoder2ForCausalLM (LayerNorm with bias, plain GELU MLP, biases).

Import reads `config.json` and (sharded) `*.safetensors` with the `safetensors` numpy API (no
torch) and fills preallocated per-layer stacks tensor by tensor, so peak memory stays ~1x the
f32 params (the files are memory-mapped). Export is the inverse and writes what
`transformers.AutoModelForCausalLM.from_pretrained` loads (v4.5x and v5: both `rope_scaling`
and `rope_parameters`).

Tensor layout (HF `nn.Linear` weights are [out, in]; gift kernels are [in, out] with heads
split out); the names below are Llama's, other tables rename some:

  HF (per layer i: model.layers.i.)      shape          gift params             shape
  self_attn.q_proj.weight                [N*H, D]       layers/attn/q           [L, D, N, H]
  self_attn.k_proj.weight / v_proj       [K*H, D]       layers/attn/k, v        [L, D, K, H]
  self_attn.o_proj.weight                [D, N*H]       layers/attn/o           [L, N, H, D]
  self_attn.q_proj.bias (k, v alike)     [N*H]          layers/attn/q_bias      [L, N, H]
  self_attn.o_proj.bias                  [D]            layers/attn/o_bias      [L, D]
  self_attn.q_norm.weight / k_norm       [H]            layers/q_norm/scale     [L, H]
  mlp.gate_proj.weight / up_proj         [F, D]         layers/mlp/gate, up     [L, D, F]
  mlp.down_proj.weight                   [D, F]         layers/mlp/down         [L, F, D]
  input_layernorm.weight                 [D]            layers/attn_norm/scale  [L, D]
  post_attention_layernorm.weight        [D]            layers/mlp_norm/scale   [L, D]
  model.embed_tokens.weight              [V, D]         embedder/embedding      [V, D]
  model.norm.weight                      [D]            final_norm/scale        [D]
  lm_head.weight (untied only)           [V, D]         unembed                 [D, V]

Both sides use the rotate-half RoPE layout, so q/k need no permutation. Norm weights keep their
stored meaning: Llama applies `x * w`, Gemma `x * (1 + w)` (gift's `norm_plus_one`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable, Iterator

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

import gift
from gift import InputError
from gift.model import layers
from gift.model.presets import ModelConfig

_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
# Non-parameter buffers some older checkpoints store; they carry nothing gift needs.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# config.json keys that never change the forward pass (bookkeeping, ids, training-only knobs).
_HARMLESS_KEYS = frozenset({
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
    "_name_or_path", "use_cache", "initializer_range", "bos_token_id", "eos_token_id",
    "pad_token_id", "attention_dropout", "residual_dropout", "embedding_dropout",
    "hidden_dropout", "output_attentions", "output_hidden_states", "return_dict",
    "pretraining_tp", "cache_implementation", "use_return_dict", "tie_word_embeddings",
    "max_position_embeddings", "_attn_implementation_autoset", "unsloth_fixed",
    "is_encoder_decoder", "tokenizer_class", "chunk_size_feed_forward", "id2label",
    "label2id", "problem_type", "torchscript", "finetuning_task", "prefix",
})


class Unsupported(ValueError):
  """A config value gift cannot express in (or read from) an architecture's table."""


class _Reader:
  """A config.json dict: `get` falls back to the architecture's transformers defaults and
  records what was read; `leftover()` names keys nobody read."""

  def __init__(self, hf: dict[str, Any], defaults: dict[str, Any], where: str, arch: str):
    self.hf, self.defaults, self.where, self.arch = hf, defaults, where, arch
    self.read: set[str] = set()

  def get(self, key: str, default: Any = None) -> Any:
    self.read.add(key)  # a key present with null means None, as in transformers
    return self.hf[key] if key in self.hf else self.defaults.get(key, default)

  def need(self, key: str) -> Any:
    value = self.get(key)
    if value is None:
      raise ValueError(f"{self.where}: missing key {key!r} (needed for {self.arch})")
    return value

  def refuse(self, key: str, why: str) -> None:
    raise Unsupported(f"{self.where}: {key}={self.hf.get(key)!r} is not supported by gift's "
                      f"{self.arch} ({why})")

  def expect(self, key: str, *ok: Any) -> Any:
    """The key's value, refused unless one of `ok` (None: absent is fine)."""
    value = self.get(key)
    if value not in ok:
      self.refuse(key, f"gift implements {' / '.join(map(repr, ok))}")
    return value

  def leftover(self) -> list[str]:
    return sorted(set(self.hf) - self.read - _HARMLESS_KEYS)


def _read_rope(r: _Reader, params: dict | None) -> tuple[float, tuple]:
  """(theta, ModelConfig.rope_scaling) from one rope_parameters / rope_scaling dict."""
  params = dict(params or {})
  theta = float(params.pop("rope_theta", None) or r.get("rope_theta") or
                r.defaults.get("rope_theta", 10000.0))
  rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
  params.pop("type", None)
  if rope_type not in layers.ROPE_KEYS:
    raise Unsupported(f"{r.where}: RoPE type {rope_type!r} (rope_parameters/rope_scaling) is "
                      f"not supported; gift implements {sorted(layers.ROPE_KEYS)}")
  if params.get("partial_rotary_factor", 1.0) == 1.0:
    params.pop("partial_rotary_factor", None)
  unknown = sorted(set(params) - set(layers.ROPE_KEYS[rope_type]))
  if unknown:
    raise Unsupported(f"{r.where}: RoPE {rope_type!r} parameters {unknown} are not supported "
                      f"(gift reads {list(layers.ROPE_KEYS[rope_type])})")
  if rope_type in ("llama3", "yarn"):  # as transformers' standardize_rope_params
    params.setdefault("original_max_position_embeddings",
                      r.get("original_max_position_embeddings") or
                      r.get("max_position_embeddings"))
  if rope_type == "default":
    return theta, ()
  return theta, tuple(sorted({**params, "rope_type": rope_type}.items()))


def _rope_dicts(hf: dict[str, Any]) -> dict | None:
  """The raw RoPE dict: v5's rope_parameters or v4's rope_scaling (+ rope_theta)."""
  return hf.get("rope_scaling") or hf.get("rope_parameters")


def _common(r: _Reader) -> dict[str, Any]:
  """Fields every Llama-like table reads the same way."""
  num_heads, d_model = r.need("num_attention_heads"), r.need("hidden_size")
  r.get("partial_rotary_factor")
  if r.hf.get("partial_rotary_factor", 1.0) not in (None, 1.0):
    r.refuse("partial_rotary_factor", "gift rotates whole heads")
  return dict(
      vocab_size=r.need("vocab_size"), num_layers=r.need("num_hidden_layers"), d_model=d_model,
      num_heads=num_heads, num_kv_heads=r.get("num_key_value_heads") or num_heads,
      head_dim=r.get("head_dim") or d_model // num_heads, mlp_dim=r.need("intermediate_size"),
      max_seq_len=int(r.get("max_position_embeddings", 2048)))


def _uniform_rope(r: _Reader) -> dict[str, Any]:
  r.get("rope_scaling"), r.get("rope_parameters"), r.get("rope_theta")
  theta, scaling = _read_rope(r, _rope_dicts(r.hf))
  return dict(rope_theta=theta, rope_scaling=scaling)


def _act(r: _Reader, key: str = "hidden_act") -> str:
  act = r.get(key)
  acts = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
          "gelu_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}
  if act not in acts:
    r.refuse(key, f"gift implements {sorted(acts)}")
  return acts[act]


def _qwen_sliding(r: _Reader, num_layers: int) -> dict[str, Any]:
  """Qwen2/3: sliding windows only with use_sliding_window, on layers >= max_window_layers
  (transformers v5), unless layer_types says otherwise."""
  # Without use_sliding_window transformers sets sliding_window=None: no layer slides, whatever
  # layer_types says.
  r.get("max_window_layers"), r.get("sliding_window"), r.get("layer_types")
  if not r.get("use_sliding_window", False):
    return {}
  window = int(r.need("sliding_window"))
  types = r.get("layer_types") or [
      "sliding_attention" if i >= r.get("max_window_layers", 28) else "full_attention"
      for i in range(num_layers)]
  return _layer_types(types, window)


def _layer_types(types: list[str], window: int | None) -> dict[str, Any]:
  if "sliding_attention" not in types or not window:
    return {}
  return dict(sliding_window=int(window), layer_types=tuple(types))


# --- config readers, one per architecture ------------------------------------------------------


def _read_llama(r: _Reader) -> dict[str, Any]:
  bias = bool(r.get("attention_bias", False))
  return dict(**_common(r), **_uniform_rope(r), mlp_activation=_act(r),
              norm_eps=float(r.get("rms_norm_eps", 1e-6)), qkv_bias=bias, o_bias=bias,
              mlp_bias=bool(r.get("mlp_bias", False)))


def _read_mistral(r: _Reader) -> dict[str, Any]:
  if r.get("layer_types") is not None:
    r.refuse("layer_types", "MistralForCausalLM slides every layer (transformers v5 ignores it)")
  window = r.get("sliding_window")
  return dict(**_common(r), **_uniform_rope(r), mlp_activation=_act(r),
              norm_eps=float(r.get("rms_norm_eps", 1e-6)), sliding_window=int(window or 0))


def _read_qwen2(r: _Reader) -> dict[str, Any]:
  c = _common(r)
  return dict(**c, **_uniform_rope(r), **_qwen_sliding(r, c["num_layers"]),
              mlp_activation=_act(r), norm_eps=float(r.get("rms_norm_eps", 1e-6)), qkv_bias=True)


def _read_qwen3(r: _Reader) -> dict[str, Any]:
  c = _common(r)
  bias = bool(r.get("attention_bias", False))
  return dict(**c, **_uniform_rope(r), **_qwen_sliding(r, c["num_layers"]),
              mlp_activation=_act(r), norm_eps=float(r.get("rms_norm_eps", 1e-6)), qk_norm=True,
              qkv_bias=bias, o_bias=bias)


def _gemma_act(r: _Reader) -> str:
  # Gemma configs say "gelu" (or hidden_activation=None) but mean the tanh approximation, which
  # is what transformers runs for them.
  r.get("hidden_act")
  act = r.hf.get("hidden_activation") or r.hf.get("hidden_act") or "gelu_pytorch_tanh"
  r.read.add("hidden_activation")
  if act not in ("gelu", "gelu_pytorch_tanh", "gelu_tanh"):
    r.refuse("hidden_activation", "Gemma runs gelu_pytorch_tanh")
  return "gelu_tanh"


_GEMMA_MATH = dict(embed_scale=True, norm_plus_one=True)


def _read_gemma(r: _Reader) -> dict[str, Any]:
  r.expect("attention_bias", None, False)
  r.expect("use_bidirectional_attention", None, False)
  return dict(**_common(r), **_uniform_rope(r), **_GEMMA_MATH, mlp_activation=_gemma_act(r),
              norm_eps=float(r.get("rms_norm_eps", 1e-6)))


def _read_gemma2(r: _Reader) -> dict[str, Any]:
  c = _common(r)
  r.expect("attention_bias", None, False)
  r.expect("use_bidirectional_attention", None, False)
  types = r.get("layer_types") or [
      "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(c["num_layers"])]
  return dict(**c, **_uniform_rope(r), **_GEMMA_MATH, mlp_activation=_gemma_act(r),
              norm_eps=float(r.get("rms_norm_eps", 1e-6)), sandwich_norms=True,
              query_pre_attn_scalar=float(r.get("query_pre_attn_scalar")),
              attn_logit_softcap=float(r.get("attn_logit_softcapping") or 0.0),
              final_logit_softcap=float(r.get("final_logit_softcapping") or 0.0),
              **_layer_types(types, r.get("sliding_window")))


def _read_gemma3(r: _Reader) -> dict[str, Any]:
  c = _common(r)
  r.expect("attention_bias", None, False)
  r.expect("use_bidirectional_attention", None, False)
  pattern = r.get("sliding_window_pattern") or r.get("_sliding_window_pattern") or 6
  types = r.get("layer_types") or [
      "sliding_attention" if (i + 1) % pattern else "full_attention"
      for i in range(c["num_layers"])]
  r.get("rope_scaling"), r.get("rope_parameters"), r.get("rope_local_base_freq")
  r.get("rope_theta")
  params = r.hf.get("rope_parameters") or {}
  if "full_attention" in params or "sliding_attention" in params:  # v5: per layer type
    full, local = params.get("full_attention") or {}, params.get("sliding_attention") or {}
    full = {"rope_theta": r.defaults["rope_theta"], **full}
    local = {"rope_theta": r.defaults["rope_local_base_freq"], **local}
  else:  # v4: rope_theta + rope_scaling (global layers), rope_local_base_freq
    full = dict(r.hf.get("rope_scaling") or {})
    local = {"rope_theta": r.get("rope_local_base_freq")}
  theta, scaling = _read_rope(r, full)
  local_theta, local_scaling = _read_rope(r, local)
  if local_scaling:
    raise Unsupported(f"{r.where}: scaled RoPE on sliding layers ({dict(local_scaling)}) is not "
                      "supported; gift scales only the global layers' RoPE")
  return dict(**c, **_GEMMA_MATH, mlp_activation=_gemma_act(r), rope_theta=theta,
              rope_scaling=scaling, local_rope_theta=local_theta,
              norm_eps=float(r.get("rms_norm_eps", 1e-6)), sandwich_norms=True, qk_norm=True,
              query_pre_attn_scalar=float(r.get("query_pre_attn_scalar")),
              attn_logit_softcap=float(r.get("attn_logit_softcapping") or 0.0),
              final_logit_softcap=float(r.get("final_logit_softcapping") or 0.0),
              **_layer_types(types, r.get("sliding_window")))


def _read_starcoder2(r: _Reader) -> dict[str, Any]:
  r.expect("mlp_type", None, "default")
  r.expect("norm_type", None, "layer_norm")
  bias = bool(r.get("use_bias", True))
  return dict(**_common(r), **_uniform_rope(r), mlp_activation=_act(r), norm_type="layer",
              mlp_gated=False, norm_eps=float(r.get("norm_epsilon", 1e-5)), qkv_bias=bias,
              o_bias=bias, mlp_bias=bias, sliding_window=int(r.get("sliding_window") or 0))


# --- config writers: the architecture-specific keys; raise Unsupported when cfg does not fit ---


def _need(cfg: ModelConfig, arch: str, **fields: Any) -> None:
  wrong = {k: getattr(cfg, k) for k, v in fields.items() if getattr(cfg, k) != v}
  if wrong:
    raise Unsupported(f"{arch} cannot express model config {wrong} (expected "
                      f"{ {k: fields[k] for k in wrong} })")


_PLAIN = dict(norm_type="rms", mlp_gated=True, sandwich_norms=False, attn_logit_softcap=0.0,
              final_logit_softcap=0.0, query_pre_attn_scalar=0.0, local_rope_theta=0.0)
_ACT_NAMES = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}


def _rope_out(cfg: ModelConfig) -> dict[str, Any]:
  scaling = dict(cfg.rope_scaling)
  return {"rope_theta": cfg.rope_theta,
          "rope_parameters": {"rope_type": "default", **scaling, "rope_theta": cfg.rope_theta},
          "rope_scaling": scaling or None}


def _write_llama(cfg: ModelConfig) -> dict[str, Any]:
  _need(cfg, "LlamaForCausalLM", **_PLAIN, embed_scale=False, norm_plus_one=False,
        qk_norm=False, sliding_window=0, o_bias=cfg.qkv_bias)
  return dict(_rope_out(cfg), hidden_act=_ACT_NAMES[cfg.mlp_activation],
              rms_norm_eps=cfg.norm_eps, attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)


def _write_mistral(cfg: ModelConfig) -> dict[str, Any]:
  _need(cfg, "MistralForCausalLM", **_PLAIN, embed_scale=False, norm_plus_one=False,
        qk_norm=False, qkv_bias=False, o_bias=False, mlp_bias=False, layer_types=())
  return dict(_rope_out(cfg), hidden_act=_ACT_NAMES[cfg.mlp_activation],
              rms_norm_eps=cfg.norm_eps, sliding_window=cfg.sliding_window or None)


def _qwen_window(cfg: ModelConfig) -> dict[str, Any]:
  if not cfg.sliding_window:
    return dict(use_sliding_window=False, sliding_window=None,
                max_window_layers=cfg.num_layers)
  types = list(cfg.layer_types or ["sliding_attention"] * cfg.num_layers)
  first = types.index("sliding_attention")
  if types != ["full_attention"] * first + ["sliding_attention"] * (cfg.num_layers - first):
    raise Unsupported(f"Qwen slides layers >= max_window_layers only, not {types}")
  return dict(use_sliding_window=True, sliding_window=cfg.sliding_window,
              max_window_layers=first, layer_types=types)


def _write_qwen2(cfg: ModelConfig) -> dict[str, Any]:
  _need(cfg, "Qwen2ForCausalLM", **_PLAIN, embed_scale=False, norm_plus_one=False,
        qk_norm=False, qkv_bias=True, o_bias=False, mlp_bias=False)
  return dict(_rope_out(cfg), **_qwen_window(cfg), hidden_act=_ACT_NAMES[cfg.mlp_activation],
              rms_norm_eps=cfg.norm_eps)


def _write_qwen3(cfg: ModelConfig) -> dict[str, Any]:
  _need(cfg, "Qwen3ForCausalLM", **_PLAIN, embed_scale=False, norm_plus_one=False,
        qk_norm=True, o_bias=cfg.qkv_bias, mlp_bias=False)
  return dict(_rope_out(cfg), **_qwen_window(cfg), hidden_act=_ACT_NAMES[cfg.mlp_activation],
              rms_norm_eps=cfg.norm_eps, attention_bias=cfg.qkv_bias)


_GEMMA_OUT = dict(embed_scale=True, norm_plus_one=True, mlp_activation="gelu_tanh",
                  qkv_bias=False, o_bias=False, mlp_bias=False, norm_type="rms", mlp_gated=True)


def _write_gemma(cfg: ModelConfig) -> dict[str, Any]:
  _need(cfg, "GemmaForCausalLM", **{**_PLAIN, **_GEMMA_OUT}, qk_norm=False, sliding_window=0)
  return dict(_rope_out(cfg), hidden_act="gelu_pytorch_tanh",
              hidden_activation="gelu_pytorch_tanh", rms_norm_eps=cfg.norm_eps,
              attention_bias=False)


def _int_if_whole(x: float) -> int | float:
  return int(x) if float(x).is_integer() else x  # transformers v5 validates it as an int


def _gemma2_common(cfg: ModelConfig) -> dict[str, Any]:
  return dict(hidden_activation="gelu_pytorch_tanh", rms_norm_eps=cfg.norm_eps,
              attention_bias=False,
              query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar or cfg.head_dim),
              attn_logit_softcapping=cfg.attn_logit_softcap or None,
              final_logit_softcapping=cfg.final_logit_softcap or None,
              sliding_window=cfg.sliding_window or None,
              layer_types=list(cfg.layer_types) or ["full_attention"] * cfg.num_layers)


def _write_gemma2(cfg: ModelConfig) -> dict[str, Any]:
  _need(cfg, "Gemma2ForCausalLM", **_GEMMA_OUT, sandwich_norms=True, qk_norm=False,
        local_rope_theta=0.0)
  if cfg.sliding_window and not cfg.layer_types:
    raise Unsupported("Gemma2ForCausalLM needs per-layer layer_types with a sliding window")
  return dict(_rope_out(cfg), **_gemma2_common(cfg))


def _write_gemma3(cfg: ModelConfig) -> dict[str, Any]:
  _need(cfg, "Gemma3ForCausalLM", **_GEMMA_OUT, sandwich_norms=True, qk_norm=True)
  if cfg.sliding_window and not cfg.layer_types:
    raise Unsupported("Gemma3ForCausalLM needs per-layer layer_types with a sliding window")
  scaling = dict(cfg.rope_scaling)
  local = cfg.local_rope_theta or cfg.rope_theta
  if not cfg.local_rope_theta and scaling:
    raise Unsupported("Gemma3ForCausalLM cannot scale the RoPE of sliding layers")
  return dict(
      _gemma2_common(cfg), rope_theta=cfg.rope_theta, rope_local_base_freq=local,
      rope_scaling=scaling or None,
      rope_parameters={
          "full_attention": {"rope_type": "default", **scaling, "rope_theta": cfg.rope_theta},
          "sliding_attention": {"rope_type": "default", "rope_theta": local}})


def _write_starcoder2(cfg: ModelConfig) -> dict[str, Any]:
  _need(cfg, "Starcoder2ForCausalLM", norm_type="layer", mlp_gated=False, embed_scale=False,
        qk_norm=False, sandwich_norms=False, attn_logit_softcap=0.0, final_logit_softcap=0.0,
        query_pre_attn_scalar=0.0, local_rope_theta=0.0, layer_types=(), o_bias=cfg.qkv_bias,
        mlp_bias=cfg.qkv_bias)
  if cfg.head_dim * cfg.num_heads != cfg.d_model:  # transformers 4.5x derives it from D / N
    raise Unsupported(f"Starcoder2ForCausalLM needs head_dim = d_model / num_heads, got "
                      f"head_dim={cfg.head_dim} with d_model={cfg.d_model}, "
                      f"num_heads={cfg.num_heads}")
  return dict(_rope_out(cfg), hidden_act=_ACT_NAMES[cfg.mlp_activation],
              norm_epsilon=cfg.norm_eps, use_bias=cfg.qkv_bias,
              sliding_window=cfg.sliding_window or None)


# --- tensor names -------------------------------------------------------------------------------

_LLAMA_NAMES = {
    ("attn_norm", "scale"): "input_layernorm.weight",
    ("attn", "q"): "self_attn.q_proj.weight", ("attn", "k"): "self_attn.k_proj.weight",
    ("attn", "v"): "self_attn.v_proj.weight", ("attn", "o"): "self_attn.o_proj.weight",
    ("attn", "q_bias"): "self_attn.q_proj.bias", ("attn", "k_bias"): "self_attn.k_proj.bias",
    ("attn", "v_bias"): "self_attn.v_proj.bias", ("attn", "o_bias"): "self_attn.o_proj.bias",
    ("q_norm", "scale"): "self_attn.q_norm.weight", ("k_norm", "scale"): "self_attn.k_norm.weight",
    ("mlp_norm", "scale"): "post_attention_layernorm.weight",
    ("mlp", "gate"): "mlp.gate_proj.weight", ("mlp", "up"): "mlp.up_proj.weight",
    ("mlp", "down"): "mlp.down_proj.weight", ("mlp", "gate_bias"): "mlp.gate_proj.bias",
    ("mlp", "up_bias"): "mlp.up_proj.bias", ("mlp", "down_bias"): "mlp.down_proj.bias",
}
_GEMMA2_NAMES = {**_LLAMA_NAMES,
                 ("post_attn_norm", "scale"): "post_attention_layernorm.weight",
                 ("mlp_norm", "scale"): "pre_feedforward_layernorm.weight",
                 ("post_mlp_norm", "scale"): "post_feedforward_layernorm.weight"}
_STARCODER2_NAMES = {**_LLAMA_NAMES,
                     ("attn_norm", "bias"): "input_layernorm.bias",
                     ("mlp_norm", "bias"): "post_attention_layernorm.bias",
                     ("mlp", "up"): "mlp.c_fc.weight", ("mlp", "up_bias"): "mlp.c_fc.bias",
                     ("mlp", "down"): "mlp.c_proj.weight", ("mlp", "down_bias"): "mlp.c_proj.bias"}
_TOP_NAMES = {("embedder", "embedding"): "embed_tokens.weight",
              ("final_norm", "scale"): "norm.weight", ("final_norm", "bias"): "norm.bias"}


@dataclasses.dataclass(frozen=True)
class Arch:
  """One Hugging Face architecture.

  read: ModelConfig fields from a `_Reader` over config.json. write: the architecture's own
  config.json keys for a ModelConfig (raises Unsupported when it does not fit). layer_names:
  gift path under params["layers"] -> HF name within `model.layers.i.`. defaults: transformers'
  config-class defaults (v5) for keys a config.json may omit. text_tower: the decoder sits in a
  multimodal checkpoint (read `text_config`, tensors under a language-model prefix).
  """
  name: str
  model_type: str
  read: Callable[[_Reader], dict[str, Any]]
  write: Callable[[ModelConfig], dict[str, Any]]
  layer_names: dict[tuple[str, ...], str]
  default_tie: bool
  defaults: dict[str, Any]
  ids: tuple[int | None, int | None, int | None] = (None, None, None)  # bos, eos, pad
  text_tower: bool = False


_LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, hidden_act="silu",
                       max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0)
_QWEN_DEFAULTS = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6,
                      rope_theta=10000.0, sliding_window=4096, max_window_layers=28)
_GEMMA3_DEFAULTS = dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216,
                        num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                        head_dim=256, max_position_embeddings=131072, rms_norm_eps=1e-6,
                        query_pre_attn_scalar=256, sliding_window=4096, rope_theta=1e6,
                        rope_local_base_freq=1e4)

_ARCH_LIST = (
    Arch("LlamaForCausalLM", "llama", _read_llama, _write_llama, _LLAMA_NAMES, False,
         _LLAMA_DEFAULTS, (1, 2, None)),
    Arch("MistralForCausalLM", "mistral", _read_mistral, _write_mistral, _LLAMA_NAMES, False,
         dict(_LLAMA_DEFAULTS, intermediate_size=14336, num_key_value_heads=8,
              max_position_embeddings=131072, sliding_window=4096), (1, 2, None)),
    Arch("Qwen2ForCausalLM", "qwen2", _read_qwen2, _write_qwen2, _LLAMA_NAMES, False,
         _QWEN_DEFAULTS),
    Arch("Qwen3ForCausalLM", "qwen3", _read_qwen3, _write_qwen3, _LLAMA_NAMES, False,
         dict(_QWEN_DEFAULTS, head_dim=128)),
    Arch("GemmaForCausalLM", "gemma", _read_gemma, _write_gemma, _LLAMA_NAMES, True,
         dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
              num_attention_heads=16, num_key_value_heads=16, head_dim=256,
              max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0), (2, 1, 0)),
    Arch("Gemma2ForCausalLM", "gemma2", _read_gemma2, _write_gemma2, _GEMMA2_NAMES, True,
         dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
              num_attention_heads=8, num_key_value_heads=4, head_dim=256,
              max_position_embeddings=8192, rms_norm_eps=1e-6, query_pre_attn_scalar=256,
              sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
              rope_theta=10000.0), (2, 1, 0)),
    Arch("Gemma3ForCausalLM", "gemma3_text", _read_gemma3, _write_gemma3, _GEMMA2_NAMES, True,
         _GEMMA3_DEFAULTS, (2, 1, 0)),
    Arch("Gemma3ForConditionalGeneration", "gemma3", _read_gemma3, _write_gemma3, _GEMMA2_NAMES,
         True, _GEMMA3_DEFAULTS, (2, 1, 0), text_tower=True),
    Arch("Starcoder2ForCausalLM", "starcoder2", _read_starcoder2, _write_starcoder2,
         _STARCODER2_NAMES, True,
         dict(vocab_size=49152, hidden_size=3072, intermediate_size=12288, num_hidden_layers=30,
              num_attention_heads=24, num_key_value_heads=2, hidden_act="gelu_pytorch_tanh",
              max_position_embeddings=4096, norm_epsilon=1e-5, rope_theta=10000.0),
         (50256, 50256, None)),
)
ARCHS: dict[str, Arch] = {a.name: a for a in _ARCH_LIST}
ARCHITECTURES = tuple(ARCHS)
# Export picks the first of these that can express a config (Gemma 3's multimodal wrapper is
# import-only: its text tower exports as Gemma3ForCausalLM).
_EXPORT_ORDER = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM",
                 "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
                 "Starcoder2ForCausalLM")
# Config keys of the multimodal wrapper itself (the vision tower is skipped).
_TOWER_KEYS = frozenset({"text_config", "vision_config", "boi_token_index", "eoi_token_index",
                         "image_token_index", "mm_tokens_per_image", "image_token_id",
                         "boi_token_id", "eoi_token_id"})


# ----------------------------------------------------------------------------------------------
# Config.


def _find_arch(hf: dict[str, Any], where: str) -> Arch:
  archs = hf.get("architectures") or []
  arch = next((ARCHS[a] for a in archs if a in ARCHS), None)
  if arch is None:
    raise Unsupported(f"{where}: architectures={archs} is not supported; gift imports "
                      f"{', '.join(ARCHITECTURES)}")
  return arch


def config_from_hf(hf: dict[str, Any], where: str = "config.json", **overrides: Any
                   ) -> ModelConfig:
  """`ModelConfig` from a parsed HF `config.json` (transformers v4 or v5 keys). Tying follows
  `tie_word_embeddings` (absent: the architecture's default); see `import_hf` for the check
  against the tensors."""
  return _config_and_arch(hf, where, overrides)[0]


def _config_and_arch(hf: dict[str, Any], where: str, overrides: dict[str, Any],
                     has_lm_head: bool | None = None) -> tuple[ModelConfig, Arch]:
  arch = _find_arch(hf, where)
  outer = hf
  if arch.text_tower:
    unknown = sorted(set(hf) - _TOWER_KEYS - _HARMLESS_KEYS)
    if unknown:
      raise Unsupported(f"{where}: keys {unknown} of {arch.name} are not understood by gift")
    hf = dict(hf.get("text_config") or {})
    where = f"{where} text_config"
  r = _Reader(hf, arch.defaults, where, arch.name)
  fields = arch.read(r)
  tie = hf.get("tie_word_embeddings", outer.get("tie_word_embeddings"))
  if tie is None:  # the flag is absent: the files decide (else the class default)
    tie = arch.default_tie if has_lm_head is None else not has_lm_head
  leftover = r.leftover()
  if leftover:
    raise Unsupported(
        f"{where}: keys {leftover} are not understood by gift's {arch.name} table; a key gift "
        "ignored could change the math (e.g. MoE, attention sinks), so it refuses them. If "
        "one is known not to, remove it from config.json")
  return ModelConfig(**{**fields, "tie_embeddings": bool(tie), **overrides}), arch


def _arch_for(cfg: ModelConfig, name: str | None = None) -> tuple[Arch, dict[str, Any]]:
  """The architecture a gift config is written as, with its config.json keys: `name`, else the
  first of _EXPORT_ORDER that can express it."""
  errors = []
  for n in ([name] if name else _EXPORT_ORDER):
    if n not in ARCHS or ARCHS[n].text_tower:
      raise ValueError(f"cannot export as {n!r}; expected one of {list(_EXPORT_ORDER)}")
    try:
      return ARCHS[n], ARCHS[n].write(cfg)
    except Unsupported as e:
      errors.append(str(e))
  raise Unsupported("no Hugging Face architecture expresses this model config:\n  "
                    + "\n  ".join(errors))


def config_to_hf(cfg: ModelConfig, bos_id: int | None = None, eos_id: int | None = None,
                 pad_id: int | None = None, dtype: str = "float32",
                 architecture: str | None = None) -> dict[str, Any]:
  """HF `config.json` dict for a gift config (readable by transformers v4.5x and v5)."""
  arch, specific = _arch_for(cfg, architecture)
  ids = arch.ids
  return {
      "architectures": [arch.name], "model_type": arch.model_type,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_seq_len,
      "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0,
      **specific,
      "bos_token_id": ids[0] if bos_id is None else bos_id,
      "eos_token_id": ids[1] if eos_id is None else eos_id,
      "pad_token_id": ids[2] if pad_id is None else pad_id,
      "dtype": dtype, "torch_dtype": dtype, "use_cache": True,
  }


def _kind(path: tuple[str, ...]) -> str:
  """How a gift param's layout maps to HF's (see _to_gift)."""
  leaf = path[-1]
  if leaf in ("q", "k", "v"):
    return "heads_in"
  if leaf == "o":
    return "heads_out"
  if leaf in ("gate", "up", "down", "unembed"):
    return "linear"
  if leaf in ("q_bias", "k_bias", "v_bias"):
    return "heads_bias"  # [X, H] <-> [X*H], the same bytes
  return "same"


def _to_gift(kind: str, w: np.ndarray, gift_shape: tuple[int, ...]) -> np.ndarray:
  """HF tensor -> gift layout (a view where possible; the caller copies into f32 storage)."""
  if kind in ("same", "heads_bias"):
    return w.reshape(gift_shape)
  return w.T.reshape(gift_shape)  # heads_in: [X*H, D]^T; heads_out: [D, N*H]^T; linear: [o, i]^T


def _to_hf(kind: str, g: np.ndarray) -> np.ndarray:
  if kind == "same":
    return g
  if kind == "heads_bias":
    return g.reshape(-1)
  if kind == "heads_in":  # [D, X, H] -> [X*H, D]
    return g.reshape(g.shape[0], -1).T
  if kind == "heads_out":  # [N, H, D] -> [D, N*H]
    return g.reshape(-1, g.shape[-1]).T
  return g.T


def _hf_shape(kind: str, gift_shape: tuple[int, ...]) -> tuple[int, ...]:
  if kind == "same":
    return gift_shape
  if kind == "heads_bias":
    return (int(np.prod(gift_shape)),)
  if kind == "heads_in":
    return (gift_shape[1] * gift_shape[2], gift_shape[0])
  if kind == "heads_out":
    return (gift_shape[2], gift_shape[0] * gift_shape[1])
  return gift_shape[::-1]


def _tensor_plan(cfg: ModelConfig, arch: Arch, prefix: str = "model.", head: str = "lm_head."
                 ) -> list[tuple[str, tuple, int | None, str, tuple]]:
  """Every HF tensor of the model: (HF name, gift path, layer index or None, kind, gift shape)."""
  from gift.model import transformer  # jax: imported on use

  plan, missing = [], []
  for key_path, x in _flat(transformer.abstract_params(cfg)):
    kind = _kind(key_path)
    if key_path[0] == "layers":
      name = arch.layer_names.get(key_path[1:])
      if name is None:
        missing.append("/".join(key_path))
        continue
      for i in range(cfg.num_layers):
        plan.append((f"{prefix}layers.{i}.{name}", key_path, i, kind, tuple(x.shape[1:])))
    elif key_path == ("unembed",):
      plan.append((f"{head}weight", key_path, None, kind, tuple(x.shape)))
    elif key_path in _TOP_NAMES:
      plan.append((prefix + _TOP_NAMES[key_path], key_path, None, kind, tuple(x.shape)))
    else:
      missing.append("/".join(key_path))
  if missing:
    raise Unsupported(f"{arch.name} has no tensor for gift params {missing}")
  return plan


def _flat(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
  out = []
  for k, v in tree.items():
    out.extend(_flat(v, prefix + (k,)) if isinstance(v, dict) else [(prefix + (k,), v)])
  return out


# ----------------------------------------------------------------------------------------------
# Import.


def _tensor_files(hf_dir: str) -> dict[str, str]:
  """HF tensor name -> safetensors file path (single file or sharded with an index)."""
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    for name in sorted(set(weight_map.values())):
      if not os.path.exists(os.path.join(hf_dir, name)):
        raise FileNotFoundError(f"{index} names shard {name!r}, which is not in {hf_dir}")
    return {k: os.path.join(hf_dir, v) for k, v in weight_map.items()}
  files = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"{hf_dir}: no *.safetensors files (and no model.safetensors.index."
                            "json); gift imports safetensors checkpoints only")
  out = {}
  for name in files:
    with safe_open(os.path.join(hf_dir, name), "numpy") as f:
      out.update({k: os.path.join(hf_dir, name) for k in f.keys()})
  return out


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]) -> Any:
  for p in path:
    tree = tree[p]
  return tree


def _prefixes(arch: Arch, names: Iterable[str]) -> tuple[str, str]:
  """(decoder prefix, lm_head prefix) of the checkpoint's tensor names: `model.` / `lm_head.`,
  or for a multimodal checkpoint's text tower transformers v5's `model.language_model.` or
  v4's `language_model.model.` (with `language_model.lm_head.`)."""
  if not arch.text_tower:
    return "model.", "lm_head."
  names = set(names)
  for prefix, head in (("model.language_model.", "lm_head."),
                       ("language_model.model.", "language_model.lm_head.")):
    if f"{prefix}embed_tokens.weight" in names:
      return prefix, head
  raise ValueError(f"{arch.name}: no language-model embedding (model.language_model."
                   "embed_tokens.weight or language_model.model.embed_tokens.weight) found")


def import_hf(hf_dir: str, **overrides: Any) -> tuple[ModelConfig, dict]:
  """Reads a HF checkpoint directory (see ARCHS); returns (ModelConfig, params pure dict of f32
  numpy).

  `overrides` set further `ModelConfig` fields (e.g. dtype="bfloat16", max_seq_len=4096).
  Tying: `tie_word_embeddings` when config.json has it (a stored lm_head.weight is then unused,
  as in transformers), else whether lm_head.weight is absent. A multimodal checkpoint's vision
  tower is skipped. Raises ValueError naming unknown architectures and config keys, missing or
  unexpected tensors and shape mismatches.
  """
  config_path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} not found: is {hf_dir} a Hugging Face model dir?")
  with open(config_path) as f:
    try:
      hf = json.load(f)
    except ValueError as e:
      raise InputError(f"{config_path}: not valid JSON ({e})") from e
  try:  # a model gift does not import, or a config it cannot express: the user's input
    arch = _find_arch(hf, config_path)
    files = _tensor_files(hf_dir)
    prefix, head = _prefixes(arch, files)
    cfg, arch = _config_and_arch(hf, config_path, overrides,
                                 has_lm_head=f"{head}weight" in files)
  except ValueError as e:
    raise InputError(str(e) if config_path in str(e) else f"{config_path}: {e}") from e
  plan = _tensor_plan(cfg, arch, prefix, head)
  expected = {name for name, *_ in plan}
  present = {n for n in files if not n.endswith(_IGNORED_SUFFIXES)}
  if arch.text_tower:  # the vision tower and projector: not part of the text model
    present = {n for n in present if n.startswith(prefix) or n.startswith(head)}
  if cfg.tie_embeddings:
    present.discard(f"{head}weight")  # some tied checkpoints store a copy; the embedding wins
  elif f"{head}weight" not in files:
    raise ValueError(f"{config_path}: tie_word_embeddings=false but there is no {head}weight "
                     "(transformers would initialize it at random)")
  missing, unexpected = sorted(expected - present), sorted(present - expected)
  if missing or unexpected:
    raise ValueError(f"{hf_dir}: tensors do not match config.json ({cfg.num_layers} layers, "
                     f"tie_word_embeddings={cfg.tie_embeddings}): missing {missing[:8]}"
                     f"{'...' if len(missing) > 8 else ''} ({len(missing)}), unexpected "
                     f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''} "
                     f"({len(unexpected)})")

  params: dict = {}
  for _, path, layer, _, shape in plan:  # preallocate, so each tensor is copied once
    if layer == 0:
      _set(params, path, np.empty((cfg.num_layers,) + shape, np.float32))
    elif layer is None:
      _set(params, path, np.empty(shape, np.float32))
  handles: dict[str, Any] = {}
  try:
    for name, path, layer, kind, shape in plan:
      file = files[name]
      if file not in handles:
        handles[file] = safe_open(file, "numpy").__enter__()
      w = handles[file].get_tensor(name)
      if w.shape != _hf_shape(kind, shape):
        raise ValueError(f"{file}: tensor {name} has shape {list(w.shape)}, expected "
                         f"{list(_hf_shape(kind, shape))} from config.json")
      dest = _get(params, path)
      (dest if layer is None else dest[layer])[...] = _to_gift(kind, w, shape)
      del w
  finally:
    for h in handles.values():
      h.__exit__(None, None, None)
  return cfg, params


# ----------------------------------------------------------------------------------------------
# Export.


def export_hf(model_cfg: ModelConfig, params: dict, out_dir: str,
              tokenizer_path: str | None = None, dtype: str = "float32",
              max_shard_bytes: int = 4 << 30, architecture: str | None = None) -> None:
  """Writes `config.json`, `model.safetensors` (or shards + index) and the tokenizer files.

  `tokenizer_path` (a `.model` file or a tokenizer folder such as a gift checkpoint) is copied
  with `gift.tokenizer.copy_files`: tokenizer.json / tokenizer.model, tokenizer_config.json,
  special_tokens_map.json, chat_template.jinja and generation_config.json, as present.

  `architecture` (an ARCHS name) picks the HF class; None: the first that expresses the config
  (a Llama-shaped config exports as LlamaForCausalLM, Qwen2's q/k/v biases as Qwen2, ...).

  `params` is the gift pure dict (numpy or jax arrays); tensors are converted one stacked param
  at a time, so peak extra memory is one param stack plus one shard. The directory is built
  beside `out_dir` and renamed into place; `out_dir` must not exist or be empty.
  """
  if dtype not in _DTYPES:
    raise ValueError(f"export dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"export target {out_dir} exists and is not empty")
  from gift import tokenizer as tokenizer_lib
  ids = {}
  if tokenizer_path:
    tok = tokenizer_lib.load(tokenizer_path)
    ids = dict(bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
  hf_config = config_to_hf(model_cfg, dtype=dtype, architecture=architecture, **ids)
  arch = ARCHS[hf_config["architectures"][0]]

  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".export-hf-", dir=parent)
  try:
    _write_safetensors(_hf_tensors(model_cfg, arch, params, _DTYPES[dtype]), tmp,
                       max_shard_bytes)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    if tokenizer_path:
      tokenizer_lib.copy_files(tokenizer_path, tmp)
    if os.path.exists(out_dir):
      os.rmdir(out_dir)  # empty (checked above)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _hf_tensors(cfg: ModelConfig, arch: Arch, params: dict, dtype: Any
                ) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, tensor) converting one gift param (stack) to host memory at a time."""
  by_path: dict[tuple, list] = {}
  for name, path, layer, kind, _ in _tensor_plan(cfg, arch):
    by_path.setdefault(path, []).append((name, layer, kind))
  for path, entries in by_path.items():
    try:
      host = np.asarray(_get(params, path), np.float32)
    except KeyError as e:
      raise ValueError(f"params have no {'/'.join(path)} (model config tie_embeddings="
                       f"{cfg.tie_embeddings})") from e
    for name, layer, kind in entries:
      yield name, np.ascontiguousarray(_to_hf(kind, host if layer is None else host[layer]),
                                       dtype=dtype)
    del host


def _write_safetensors(tensors: Iterable[tuple[str, np.ndarray]], out_dir: str,
                       max_shard_bytes: int) -> None:
  """`model.safetensors`, or `model-0000i-of-0000n.safetensors` + index above the size."""
  shards: list[list[str]] = []  # tensor names per written shard
  shard: dict[str, np.ndarray] = {}
  size = total = 0

  def flush() -> None:
    save_file(shard, os.path.join(out_dir, f"part-{len(shards)}"), metadata={"format": "pt"})
    shards.append(list(shard))
    shard.clear()

  for name, t in tensors:
    if shard and size + t.nbytes > max_shard_bytes:
      flush()
      size = 0
    shard[name] = t
    size += t.nbytes
    total += t.nbytes
  flush()
  if len(shards) == 1:
    os.replace(os.path.join(out_dir, "part-0"), os.path.join(out_dir, "model.safetensors"))
    return
  weight_map = {}
  for i, names in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    os.replace(os.path.join(out_dir, f"part-{i}"), os.path.join(out_dir, fname))
    weight_map.update({n: fname for n in names})
  with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
              f, indent=2)


# ----------------------------------------------------------------------------------------------
# Command line.


def import_main(argv: list[str]) -> int:
  """`gift import-hf --hf_dir DIR --out CKPT [--dtype bfloat16] [--max_seq_len N]`, or
  `gift import-hf --peft_adapter DIR (--base CKPT | --hf_dir BASE) --out CKPT` (a LoRA
  checkpoint; with --hf_dir the base is imported into CKPT/base first)."""
  p = gift.ArgumentParser(prog="gift import-hf", description=__doc__.splitlines()[0])
  p.add_argument("--hf_dir", default=None, help="HF model dir: config.json + *.safetensors")
  p.add_argument("--peft_adapter", default=None,
                 help="a PEFT LoRA adapter dir (adapter_config.json + adapter_model.safetensors)")
  p.add_argument("--base", default=None, help="with --peft_adapter: the base gift checkpoint")
  p.add_argument("--out", required=True, help="gift checkpoint dir to write")
  p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES),
                 help="compute dtype recorded in the model config (weights are stored f32)")
  p.add_argument("--max_seq_len", type=int, default=0,
                 help="override max_position_embeddings (0: keep)")
  args = p.parse_args(argv)
  from gift import checkpoint

  if args.peft_adapter:
    from gift import peft_io
    if bool(args.base) == bool(args.hf_dir):
      p.error("--peft_adapter needs its base: exactly one of --base CKPT or --hf_dir DIR")
    base = args.base
    if args.hf_dir:
      base = os.path.join(args.out, "base")
      import_main(["--hf_dir", args.hf_dir, "--out", base, "--dtype", args.dtype]
                  + (["--max_seq_len", str(args.max_seq_len)] if args.max_seq_len else []))
    lcfg = peft_io.import_peft(args.peft_adapter, base, args.out)
    print(f"imported PEFT adapter {args.peft_adapter} -> {args.out} (rank {lcfg.rank}, "
          f"targets {lcfg.targets}, base {base})")
    return 0
  if not args.hf_dir:
    p.error("--hf_dir is required (or --peft_adapter)")
  overrides: dict[str, Any] = dict(dtype=args.dtype)
  if args.max_seq_len:
    overrides["max_seq_len"] = args.max_seq_len
  cfg, params = import_hf(args.hf_dir, **overrides)
  n = sum(x.size for x in _leaves(params))
  params = _to_jax_leafwise(params)
  checkpoint.save_model(args.out, cfg, params, tokenizer_path=tokenizer_source(args.hf_dir))
  print(f"imported {args.hf_dir} -> {args.out}: {n:,} params, {cfg}")
  return 0


def tokenizer_source(hf_dir: str) -> str | None:
  """`hf_dir` when it holds a tokenizer (tokenizer.json or tokenizer.model; its config files
  and generation_config.json travel with it), else None."""
  has = lambda name: os.path.isfile(os.path.join(hf_dir, name))
  return hf_dir if has("tokenizer.json") or has("tokenizer.model") else None


def export_main(argv: list[str]) -> int:
  """`gift export-hf --checkpoint CKPT --out DIR [--step S] [--dtype bfloat16]`."""
  p = gift.ArgumentParser(prog="gift export-hf", description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True, help="gift checkpoint dir")
  p.add_argument("--out", required=True, help="HF model dir to write (must not exist)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES),
                 help="tensor dtype in the safetensors files")
  p.add_argument("--max_shard_gb", type=float, default=4.0, help="shard safetensors above this")
  p.add_argument("--adapter_only", action="store_true",
                 help="a LoRA run: write its adapter in PEFT format (adapter_config.json + "
                 "adapter_model.safetensors)")
  p.add_argument("--merge", action="store_true",
                 help="a LoRA run: write the full model with the adapters merged into the base")
  p.add_argument("--architecture", default=None, choices=list(_EXPORT_ORDER),
                 help="HF class to write (default: the first that expresses the model)")
  args = p.parse_args(argv)
  from gift import checkpoint, peft_io

  if peft_io.is_lora(args.checkpoint):
    if args.adapter_only == args.merge:
      p.error(f"{args.checkpoint} is a LoRA run: pass --adapter_only or --merge")
    return peft_io.export_main(args)
  if args.adapter_only or args.merge:
    p.error(f"{args.checkpoint} holds a full model (no {peft_io.LORA_FILE}); --adapter_only and "
            "--merge apply to LoRA runs")

  cfg, params, tok = checkpoint.load_model(args.checkpoint, step=args.step)
  export_hf(cfg, params, args.out, tokenizer_path=tok, dtype=args.dtype,
            max_shard_bytes=int(args.max_shard_gb * (1 << 30)), architecture=args.architecture)
  print(f"exported {args.checkpoint} -> {args.out}")
  return 0


def _to_jax_leafwise(tree: dict) -> dict:
  """The numpy tree as jax arrays, one leaf at a time, each numpy array dropped once copied: the
  checkpoint writer then holds one copy of the weights, not the numpy stacks beside its own."""
  import jax
  out = {}
  for key in list(tree):
    value = tree.pop(key)
    out[key] = _to_jax_leafwise(value) if isinstance(value, dict) else jax.device_put(value)
    del value
  return out


def _leaves(tree: Any) -> list:
  if isinstance(tree, dict):
    return [x for v in tree.values() for x in _leaves(v)]
  return [tree]

