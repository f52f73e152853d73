"""Model shapes: the `ModelConfig` dataclass and named presets.

Only shapes and numerics live here; weights come from training or `gift import-hf`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Decoder-only transformer shape and numerics.

  Attributes:
    vocab_size: rows of the embedding table (V).
    num_layers: transformer blocks (L).
    d_model: residual width (D).
    num_heads: query heads (N).
    num_kv_heads: key/value heads (K); N % K == 0. K == 1 is MQA, K == N is MHA.
    head_dim: per-head width (H), independent of D.
    mlp_dim: hidden width of the gated MLP (F).
    mlp_activation: "silu" (SwiGLU, Llama) or "gelu_tanh" (GeGLU, Gemma).
    tie_embeddings: unembed with the transposed embedding table.
    embed_scale: multiply embeddings by sqrt(D) (Gemma).
    norm_plus_one: RMSNorm scales by (1 + w) with w initialised to 0 (Gemma) instead of w.
    norm_eps: RMSNorm epsilon.
    rope_theta: RoPE base.
    max_seq_len: longest sequence (KV cache size default; not a parameter shape).
    dtype: compute dtype ("bfloat16" on accelerators, "float32" for tests/parity).
    param_dtype: parameter (master weight) dtype.
    remat_policy: "none" | "full" | "dots_saveable" | "dots_with_no_batch_dims_saveable" |
      "nothing_saveable" (jax.checkpoint_policies names) for the scanned block.
    scan_layers: scan over stacked layer weights (fixed checkpoint layout: leading L axis).
    attention_impl: training/prefill attention without a cache: "default" (gift's einsum form;
      on CPU in float32 with hand-written row-major gradients), "xla" or "cudnn"
      (`jax.nn.dot_product_attention`; "cudnn" is cuDNN flash attention on NVIDIA GPUs, bf16 or
      f16, causal work skipped). Decoding with a KV cache always uses "default".
    decode_attention: attention of one new token per row against a KV cache (the decode steps
      of `gift sample` and `gift serve`): "auto" (float32 on a CPU: gift's XLA:CPU custom
      call, which reads each row's cache only up to its length, gift/model/cpu_kernels.py;
      XLA's ops elsewhere, or where no C++ compiler built it) or "xla" (always XLA's ops). A
      custom call has no sharding rule: samplers on a mesh of more than one device use "xla".

  Per-family math (each field defaults to the Llama behaviour; a family is a preset, a set of
  these values, never a name tested in the code):
    norm_type: "rms" (RMSNorm) or "layer" (LayerNorm with a bias; StarCoder2).
    mlp_gated: gated MLP down(act(x @ gate) * (x @ up)); False: down(act(x @ up)) (StarCoder2).
    qkv_bias: biases on the q/k/v projections (Qwen2, StarCoder2). o_bias: on the output
      projection. mlp_bias: on every MLP projection.
    qk_norm: RMSNorm over head_dim of q and k before RoPE (Qwen3: x * w; Gemma 3: x * (1 + w),
      following `norm_plus_one`).
    sandwich_norms: norms on the attention output and the MLP output too, before each residual
      add (Gemma 2/3: post_attention / pre_ and post_feedforward norms).
    attn_logit_softcap: attention scores -> cap * tanh(scores / cap) after scaling, before the
      mask (0 = off; Gemma 2). final_logit_softcap: the same on the output logits.
    query_pre_attn_scalar: queries are scaled by this ** -0.5 instead of head_dim ** -0.5
      (0 = head_dim; Gemma 2/3).
    rope_scaling: the RoPE variant of `rope_theta`'s (full-attention) layers as (key, value)
      pairs, e.g. (("factor", 8.0), ("rope_type", "llama3"), ...); () = unscaled. A dict is
      accepted and frozen. Types: see `layers.ROPE_INIT_FUNCTIONS`.
    local_rope_theta: RoPE base of the sliding-window layers, unscaled (0 = same RoPE as the
      full layers; Gemma 3: 1e4 local, 1e6 global).
    sliding_window: a sliding layer's query sees only the last `sliding_window` keys (itself
      included); 0 = no sliding layers.
    layer_types: per layer "full_attention" or "sliding_attention"; () = every layer sliding
      when sliding_window > 0 (Mistral, StarCoder2), else full.
  """

  vocab_size: int = 256
  num_layers: int = 2
  d_model: int = 64
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  mlp_dim: int = 128
  mlp_activation: str = "silu"
  tie_embeddings: bool = False
  embed_scale: bool = False
  norm_plus_one: bool = False
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  max_seq_len: int = 2048
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = True
  attention_impl: str = "default"
  decode_attention: str = "auto"
  norm_type: str = "rms"
  mlp_gated: bool = True
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  sandwich_norms: bool = False
  attn_logit_softcap: float = 0.0
  final_logit_softcap: float = 0.0
  query_pre_attn_scalar: float = 0.0
  rope_scaling: tuple = ()
  local_rope_theta: float = 0.0
  sliding_window: int = 0
  layer_types: tuple = ()

  def __post_init__(self):
    # Frozen and hashable (jit's static argument): dicts and JSON lists become sorted tuples.
    scaling = self.rope_scaling
    if isinstance(scaling, Mapping) or hasattr(scaling, "items"):
      scaling = tuple(sorted(dict(scaling).items()))
    scaling = tuple(sorted((str(k), _frozen(v)) for k, v in scaling))
    object.__setattr__(self, "rope_scaling", scaling)
    object.__setattr__(self, "layer_types", tuple(self.layer_types))
    if self.layer_types and len(self.layer_types) != self.num_layers:
      raise ValueError(f"model.layer_types has {len(self.layer_types)} entries for "
                       f"num_layers={self.num_layers}")
    bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
    if bad:
      raise ValueError(f"model.layer_types: unknown {bad}; expected entries of {LAYER_TYPES}")
    if "sliding_attention" in self.layer_types and self.sliding_window <= 0:
      raise ValueError("model.layer_types has sliding_attention layers but sliding_window=0")
    if self.norm_type not in ("rms", "layer"):
      raise ValueError(f"model.norm_type={self.norm_type!r}; expected 'rms' or 'layer'")

  @property
  def sliding_layers(self) -> tuple[bool, ...]:
    """Per layer: whether it is a sliding-window layer."""
    if self.layer_types:
      return tuple(t == "sliding_attention" for t in self.layer_types)
    return (self.sliding_window > 0,) * self.num_layers

  def replace(self, **kw: Any) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Any) -> "ModelConfig":
    """From a dict or ConfigDict; unknown keys are an error naming them."""
    d = dict(d)
    d.pop("preset", None)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(names)}")
    return cls(**d)


LAYER_TYPES = ("full_attention", "sliding_attention")


def _frozen(v: Any) -> Any:
  return tuple(_frozen(x) for x in v) if isinstance(v, (list, tuple)) else v


_LLAMA = dict(mlp_activation="silu", tie_embeddings=False, embed_scale=False,
              norm_plus_one=False, norm_eps=1e-5, rope_theta=10000.0)
_GEMMA = dict(mlp_activation="gelu_tanh", tie_embeddings=True, embed_scale=True,
              norm_plus_one=True, norm_eps=1e-6, rope_theta=10000.0)

PRESETS: dict[str, dict[str, Any]] = {
    "test_tiny": dict(vocab_size=512, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2,
                      head_dim=16, mlp_dim=128, max_seq_len=256, **_LLAMA),
    "quickstart": dict(vocab_size=4096, num_layers=4, d_model=256, num_heads=4, num_kv_heads=4,
                       head_dim=64, mlp_dim=704, max_seq_len=1024, **_LLAMA),
    "gemma_2b": dict(vocab_size=256000, num_layers=18, d_model=2048, num_heads=8, num_kv_heads=1,
                     head_dim=256, mlp_dim=16384, max_seq_len=8192, **_GEMMA),
    "gemma_7b": dict(vocab_size=256000, num_layers=28, d_model=3072, num_heads=16,
                     num_kv_heads=16, head_dim=256, mlp_dim=24576, max_seq_len=8192, **_GEMMA),
    "llama_7b": dict(vocab_size=32000, num_layers=32, d_model=4096, num_heads=32, num_kv_heads=32,
                     head_dim=128, mlp_dim=11008, max_seq_len=4096, **_LLAMA),
    # The paper's code LLM is PaLM-62B shaped: multi-query attention, SwiGLU with 4*D hidden,
    # embeddings shared with the unembedding, no embedding scale.
    "paper_62b": dict(vocab_size=256000, num_layers=64, d_model=8192, num_heads=32,
                      num_kv_heads=1, head_dim=256, mlp_dim=32768, max_seq_len=2048,
                      **{**_LLAMA, "tie_embeddings": True}),
}
PRESETS["codegemma_2b"] = dict(PRESETS["gemma_2b"])
PRESETS["codegemma_7b"] = dict(PRESETS["gemma_7b"])
PRESETS["codellama_7b"] = dict(PRESETS["llama_7b"], vocab_size=32016, rope_theta=1_000_000.0,
                               max_seq_len=16384)
# ~1B Llama-style shape for accelerator MFU benchmarks.
PRESETS["llama_1b"] = dict(vocab_size=32000, num_layers=16, d_model=2048, num_heads=16,
                           num_kv_heads=16, head_dim=128, mlp_dim=5632, max_seq_len=2048, **_LLAMA)




# The code LLMs people fine-tune in 2025, shapes and math as in their Hugging Face config.json
# (`gift import-hf` reads the same values from the checkpoint; these presets are for `gift plan`
# and for configs that name a shape). Parameter counts: tests/model/test_presets.py.
def _shape(layers: int, d: int, heads: int, kv: int, head_dim: int, mlp: int, vocab: int,
           tie: bool, **kw: Any) -> dict[str, Any]:
  return dict(kw, num_layers=layers, d_model=d, num_heads=heads, num_kv_heads=kv,
              head_dim=head_dim, mlp_dim=mlp, vocab_size=vocab, tie_embeddings=tie)


_QWEN25 = dict(_LLAMA, norm_eps=1e-6, rope_theta=1_000_000.0, qkv_bias=True, max_seq_len=32768)
_QWEN3 = dict(_LLAMA, norm_eps=1e-6, rope_theta=1_000_000.0, qk_norm=True, max_seq_len=40960)
_LLAMA3 = dict(_LLAMA, rope_theta=500_000.0, max_seq_len=131072)
_LLAMA3_ROPE = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192)
_DEEPSEEK = dict(_LLAMA, norm_eps=1e-6, rope_theta=100_000.0, max_seq_len=16384,
                 rope_scaling=dict(rope_type="linear", factor=4.0))
_GEMMA2 = dict(_GEMMA, sandwich_norms=True, attn_logit_softcap=50.0, final_logit_softcap=30.0,
               sliding_window=4096, max_seq_len=8192)
_GEMMA3 = dict(_GEMMA, sandwich_norms=True, qk_norm=True, rope_theta=1_000_000.0,
               local_rope_theta=10_000.0, max_seq_len=131072)
_STARCODER2 = dict(mlp_activation="gelu_tanh", norm_type="layer", mlp_gated=False, norm_eps=1e-5,
                   qkv_bias=True, o_bias=True, mlp_bias=True, sliding_window=4096,
                   max_seq_len=16384)


def _alternating(layers: int, period: int) -> tuple[str, ...]:
  """Gemma 2 (period 2) / Gemma 3 (period 6): every period-th layer global, the rest sliding."""
  return tuple("full_attention" if (i + 1) % period == 0 else "sliding_attention"
               for i in range(layers))


def _gemma2(layers, d, heads, kv, head_dim, mlp, query_pre_attn_scalar):
  return _shape(layers, d, heads, kv, head_dim, mlp, 256000, True, **_GEMMA2,
                query_pre_attn_scalar=query_pre_attn_scalar, layer_types=_alternating(layers, 2))


def _gemma3(layers, d, heads, kv, head_dim, mlp, vocab, window, scaled, qpas=256, max_len=131072):
  scaling = dict(rope_type="linear", factor=8.0) if scaled else {}
  return _shape(layers, d, heads, kv, head_dim, mlp, vocab, True, **dict(
      _GEMMA3, max_seq_len=max_len), query_pre_attn_scalar=qpas, sliding_window=window,
      layer_types=_alternating(layers, 6), rope_scaling=scaling)


PRESETS.update({
    "qwen2.5-coder-0.5b": _shape(24, 896, 14, 2, 64, 4864, 151936, True, **_QWEN25),
    "qwen2.5-coder-1.5b": _shape(28, 1536, 12, 2, 128, 8960, 151936, True, **_QWEN25),
    "qwen2.5-coder-7b": _shape(28, 3584, 28, 4, 128, 18944, 152064, False, **_QWEN25),
    "qwen2.5-coder-14b": _shape(48, 5120, 40, 8, 128, 13824, 152064, False, **_QWEN25),
    "qwen2.5-coder-32b": _shape(64, 5120, 40, 8, 128, 27648, 152064, False, **_QWEN25),
    "qwen3-0.6b": _shape(28, 1024, 16, 8, 128, 3072, 151936, True, **_QWEN3),
    "qwen3-1.7b": _shape(28, 2048, 16, 8, 128, 6144, 151936, True, **_QWEN3),
    "qwen3-4b": _shape(36, 2560, 32, 8, 128, 9728, 151936, True, **_QWEN3),
    "qwen3-8b": _shape(36, 4096, 32, 8, 128, 12288, 151936, False, **_QWEN3),
    "qwen3-14b": _shape(40, 5120, 40, 8, 128, 17408, 151936, False, **_QWEN3),
    "qwen3-32b": _shape(64, 5120, 64, 8, 128, 25600, 151936, False, **_QWEN3),
    "llama3.2-1b": _shape(16, 2048, 32, 8, 64, 8192, 128256, True, **_LLAMA3,
                          rope_scaling=dict(_LLAMA3_ROPE, factor=32.0)),
    "llama3.2-3b": _shape(28, 3072, 24, 8, 128, 8192, 128256, True, **_LLAMA3,
                          rope_scaling=dict(_LLAMA3_ROPE, factor=32.0)),
    "llama3.1-8b": _shape(32, 4096, 32, 8, 128, 14336, 128256, False, **_LLAMA3,
                          rope_scaling=dict(_LLAMA3_ROPE, factor=8.0)),
    "deepseek-coder-1.3b": _shape(24, 2048, 16, 16, 128, 5504, 32256, False, **_DEEPSEEK),
    "deepseek-coder-6.7b": _shape(32, 4096, 32, 32, 128, 11008, 32256, False, **_DEEPSEEK),
    "deepseek-coder-33b": _shape(62, 7168, 56, 8, 128, 19200, 32256, False, **_DEEPSEEK),
    "gemma2-2b": _gemma2(26, 2304, 8, 4, 256, 9216, 256),
    "gemma2-9b": _gemma2(42, 3584, 16, 8, 256, 14336, 256),
    "gemma2-27b": _gemma2(46, 4608, 32, 16, 128, 36864, 144),
    "gemma3-270m": _gemma3(18, 640, 4, 1, 256, 2048, 262144, 512, False, max_len=32768),
    "gemma3-1b": _gemma3(26, 1152, 4, 1, 256, 6912, 262144, 512, False, max_len=32768),
    "gemma3-4b": _gemma3(34, 2560, 8, 4, 256, 10240, 262208, 1024, True),
    "gemma3-12b": _gemma3(48, 3840, 16, 8, 256, 15360, 262208, 1024, True),
    "gemma3-27b": _gemma3(62, 5376, 32, 16, 128, 21504, 262208, 1024, True, qpas=168),
    "starcoder2-3b": _shape(30, 3072, 24, 2, 128, 12288, 49152, True, **_STARCODER2,
                            rope_theta=999999.4420358813),
    "starcoder2-7b": _shape(32, 4608, 36, 4, 128, 18432, 49152, True, **_STARCODER2,
                            rope_theta=1_000_000.0),
    "starcoder2-15b": _shape(40, 6144, 48, 4, 128, 24576, 49152, False, **_STARCODER2,
                             rope_theta=100_000.0),
})


def get_preset(name: str, **overrides: Any) -> ModelConfig:
  """Returns the named preset's `ModelConfig`, with field overrides."""
  if name not in PRESETS:
    import difflib
    close = difflib.get_close_matches(name, PRESETS, n=3)
    raise ValueError(f"unknown model preset {name!r}; closest: {close or sorted(PRESETS)}")
  return ModelConfig(**{**PRESETS[name], **overrides})
