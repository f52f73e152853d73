"""Hugging Face Llama/Gemma checkpoints <-> gift (`ModelConfig`, params pure dict).

Import reads `config.json` and (sharded) `*.safetensors` with the `safetensors` numpy API (no
torch) and fills preallocated per-layer stacks tensor by tensor, so peak memory stays ~1x the
f32 params (the files are memory-mapped). Export is the inverse and writes what
`transformers.AutoModelForCausalLM.from_pretrained` loads.

Tensor layout (HF `nn.Linear` weights are [out, in]; gift kernels are [in, out] with heads
split out):

  HF (per layer i: model.layers.i.)      shape          gift params             shape
  self_attn.q_proj.weight                [N*H, D]       layers/attn/q           [L, D, N, H]
  self_attn.k_proj.weight / v_proj       [K*H, D]       layers/attn/k, v        [L, D, K, H]
  self_attn.o_proj.weight                [D, N*H]       layers/attn/o           [L, N, H, D]
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

import argparse
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from gift.model.presets import ModelConfig

ARCHITECTURES = ("LlamaForCausalLM", "GemmaForCausalLM")
_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}

# (HF name suffix within a layer, gift path under params["layers"], layout kind)
_LAYER_TENSORS = (
    ("self_attn.q_proj.weight", ("attn", "q"), "heads_in"),
    ("self_attn.k_proj.weight", ("attn", "k"), "heads_in"),
    ("self_attn.v_proj.weight", ("attn", "v"), "heads_in"),
    ("self_attn.o_proj.weight", ("attn", "o"), "heads_out"),
    ("mlp.gate_proj.weight", ("mlp", "gate"), "linear"),
    ("mlp.up_proj.weight", ("mlp", "up"), "linear"),
    ("mlp.down_proj.weight", ("mlp", "down"), "linear"),
    ("input_layernorm.weight", ("attn_norm", "scale"), "same"),
    ("post_attention_layernorm.weight", ("mlp_norm", "scale"), "same"),
)
# Non-parameter buffers some older checkpoints store; they carry nothing gift needs.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _to_gift(kind: str, w: np.ndarray, gift_shape: tuple[int, ...]) -> np.ndarray:
  """HF tensor -> gift layout (a view where possible; the caller copies into f32 storage)."""
  if kind == "same":
    return w
  return w.T.reshape(gift_shape)  # heads_in: [X*H, D]^T; heads_out: [D, N*H]^T; linear: [o, i]^T


def _to_hf(kind: str, g: np.ndarray) -> np.ndarray:
  if kind == "same":
    return g
  if kind == "heads_in":  # [D, X, H] -> [X*H, D]
    return g.reshape(g.shape[0], -1).T
  if kind == "heads_out":  # [N, H, D] -> [D, N*H]
    return g.reshape(-1, g.shape[-1]).T
  return g.T


# ----------------------------------------------------------------------------------------------
# Config.


def _family(cfg: ModelConfig) -> str:
  """"llama" or "gemma": the HF architecture a gift config can be written as."""
  gemma = (cfg.mlp_activation == "gelu_tanh", cfg.embed_scale, cfg.norm_plus_one)
  if all(gemma):
    return "gemma"
  if not any(gemma) and cfg.mlp_activation == "silu":
    return "llama"
  raise ValueError(
      f"model config (mlp_activation={cfg.mlp_activation!r}, embed_scale={cfg.embed_scale}, "
      f"norm_plus_one={cfg.norm_plus_one}) is neither Llama (silu, False, False) nor Gemma "
      "(gelu_tanh, True, True); no Hugging Face architecture matches it")


def config_from_hf(hf: dict[str, Any], where: str = "config.json", **overrides: Any) -> ModelConfig:
  """`ModelConfig` from a parsed HF `config.json` (transformers v4 or v5 keys)."""
  archs = hf.get("architectures") or []
  arch = next((a for a in archs if a in ARCHITECTURES), None)
  if arch is None:
    raise ValueError(f"{where}: architectures={archs} is not supported; gift imports "
                     f"{' and '.join(ARCHITECTURES)}")

  def need(key: str) -> Any:
    if key not in hf:
      raise ValueError(f"{where}: missing key {key!r} (needed for {arch})")
    return hf[key]

  for key in ("attention_bias", "mlp_bias"):
    if hf.get(key):
      raise ValueError(f"{where}: {key}=true is not supported (gift layers have no biases)")
  # v5 writes rope_parameters={rope_type, rope_theta}; v4 wrote rope_theta (+ rope_scaling).
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise ValueError(f"{where}: RoPE type {rope_type!r} (rope_parameters/rope_scaling) is not "
                     "supported; gift implements the default (unscaled) RoPE")
  rope_theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))

  num_heads, d_model = need("num_attention_heads"), need("hidden_size")
  head_dim = hf.get("head_dim") or d_model // num_heads
  if arch == "LlamaForCausalLM":
    act = hf.get("hidden_act", "silu")
    if act != "silu":
      raise ValueError(f"{where}: hidden_act={act!r}; LlamaForCausalLM in gift expects 'silu'")
    family = dict(mlp_activation="silu", embed_scale=False, norm_plus_one=False)
    default_tie = False
  else:
    # Gemma 1 configs say "gelu" (or hidden_activation=None) but mean the tanh approximation,
    # which is what transformers runs for them.
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu", "gelu_pytorch_tanh", "gelu_tanh"):
      raise ValueError(f"{where}: hidden_act={act!r}; GemmaForCausalLM expects gelu_pytorch_tanh")
    family = dict(mlp_activation="gelu_tanh", embed_scale=True, norm_plus_one=True)
    default_tie = True
  return ModelConfig(
      vocab_size=need("vocab_size"), num_layers=need("num_hidden_layers"), d_model=d_model,
      num_heads=num_heads, num_kv_heads=hf.get("num_key_value_heads") or num_heads,
      head_dim=head_dim, mlp_dim=need("intermediate_size"),
      tie_embeddings=bool(hf.get("tie_word_embeddings", default_tie)),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=rope_theta,
      max_seq_len=int(hf.get("max_position_embeddings", 2048)), **family, **overrides)


def config_to_hf(cfg: ModelConfig, bos_id: int | None = None, eos_id: int | None = None,
                 pad_id: int | None = None, dtype: str = "float32") -> dict[str, Any]:
  """HF `config.json` dict for a gift config (readable by transformers v4 and v5)."""
  family = _family(cfg)
  ids = dict(llama=(1, 2, None), gemma=(2, 1, 0))[family]
  return {
      "architectures": ["LlamaForCausalLM" if family == "llama" else "GemmaForCausalLM"],
      "model_type": family,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu" if family == "llama" else "gelu_pytorch_tanh",
      "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "rope_theta": cfg.rope_theta,
      "tie_word_embeddings": cfg.tie_embeddings,
      "attention_bias": False, "attention_dropout": 0.0,
      **({"mlp_bias": False} if family == "llama" else {}),
      "bos_token_id": ids[0] if bos_id is None else bos_id,
      "eos_token_id": ids[1] if eos_id is None else eos_id,
      "pad_token_id": ids[2] if pad_id is None else pad_id,
      "dtype": dtype, "torch_dtype": dtype, "use_cache": True,
  }


def _hf_shape(kind: str, gift_shape: tuple[int, ...]) -> tuple[int, ...]:
  if kind == "same":
    return gift_shape
  if kind == "heads_in":
    return (gift_shape[1] * gift_shape[2], gift_shape[0])
  if kind == "heads_out":
    return (gift_shape[2], gift_shape[0] * gift_shape[1])
  return gift_shape[::-1]


def _tensor_plan(cfg: ModelConfig) -> list[tuple[str, tuple, int | None, str, tuple]]:
  """Every HF tensor of the model: (HF name, gift path, layer index or None, kind, gift shape)."""
  D, N, K, H, F, V = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim,
                      cfg.vocab_size)
  per_layer = {("attn", "q"): (D, N, H), ("attn", "k"): (D, K, H), ("attn", "v"): (D, K, H),
               ("attn", "o"): (N, H, D), ("mlp", "gate"): (D, F), ("mlp", "up"): (D, F),
               ("mlp", "down"): (F, D), ("attn_norm", "scale"): (D,),
               ("mlp_norm", "scale"): (D,)}
  plan = [("model.embed_tokens.weight", ("embedder", "embedding"), None, "same", (V, D)),
          ("model.norm.weight", ("final_norm", "scale"), None, "same", (D,))]
  if not cfg.tie_embeddings:
    plan.append(("lm_head.weight", ("unembed",), None, "linear", (D, V)))
  for suffix, path, kind in _LAYER_TENSORS:
    for i in range(cfg.num_layers):
      plan.append((f"model.layers.{i}.{suffix}", ("layers",) + path, i, kind, per_layer[path]))
  return plan


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


def import_hf(hf_dir: str, **overrides: Any) -> tuple[ModelConfig, dict]:
  """Reads a HF Llama/Gemma directory; returns (ModelConfig, params pure dict of f32 numpy).

  `overrides` set further `ModelConfig` fields (e.g. dtype="bfloat16", max_seq_len=4096).
  Raises ValueError naming unknown architectures, missing or unexpected tensors and shape
  mismatches.
  """
  config_path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} not found: is {hf_dir} a Hugging Face model dir?")
  with open(config_path) as f:
    try:
      cfg = config_from_hf(json.load(f), config_path, **overrides)
    except ValueError as e:  # not JSON, or a model gift does not import: the user's input
      from gift import InputError
      raise InputError(str(e) if config_path in str(e) else f"{config_path}: {e}") from e
  files = _tensor_files(hf_dir)
  plan = _tensor_plan(cfg)
  expected = {name for name, *_ in plan}
  present = {n for n in files if not n.endswith(_IGNORED_SUFFIXES)}
  if cfg.tie_embeddings:
    present.discard("lm_head.weight")  # some tied checkpoints store a copy; the embedding wins
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
              max_shard_bytes: int = 4 << 30) -> None:
  """Writes `config.json`, `model.safetensors` (or shards + index) and `tokenizer.model`.

  `params` is the gift pure dict (numpy or jax arrays); tensors are converted one stacked param
  at a time, so peak extra memory is one param stack plus one shard. The directory is built
  beside `out_dir` and renamed into place; `out_dir` must not exist or be empty.
  """
  if dtype not in _DTYPES:
    raise ValueError(f"export dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"export target {out_dir} exists and is not empty")
  ids = {}
  if tokenizer_path:
    from gift import tokenizer as tokenizer_lib
    tok = tokenizer_lib.load(tokenizer_path)
    ids = dict(bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
  hf_config = config_to_hf(model_cfg, dtype=dtype, **ids)

  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".export-hf-", dir=parent)
  try:
    _write_safetensors(_hf_tensors(model_cfg, params, _DTYPES[dtype]), tmp, max_shard_bytes)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    if tokenizer_path:
      shutil.copyfile(tokenizer_path, os.path.join(tmp, "tokenizer.model"))
    if os.path.exists(out_dir):
      os.rmdir(out_dir)  # empty (checked above)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _hf_tensors(cfg: ModelConfig, params: dict, dtype: Any) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, tensor) converting one gift param (stack) to host memory at a time."""
  by_path: dict[tuple, list] = {}
  for name, path, layer, kind, _ in _tensor_plan(cfg):
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
  """`gift import-hf --hf_dir DIR --out CKPT [--dtype bfloat16] [--max_seq_len N]`."""
  p = argparse.ArgumentParser(prog="gift import-hf", description=__doc__.splitlines()[0])
  p.add_argument("--hf_dir", required=True, help="HF model dir: config.json + *.safetensors")
  p.add_argument("--out", required=True, help="gift checkpoint dir to write")
  p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES),
                 help="compute dtype recorded in the model config (weights are stored f32)")
  p.add_argument("--max_seq_len", type=int, default=0,
                 help="override max_position_embeddings (0: keep)")
  args = p.parse_args(argv)
  from gift import checkpoint

  overrides: dict[str, Any] = dict(dtype=args.dtype)
  if args.max_seq_len:
    overrides["max_seq_len"] = args.max_seq_len
  cfg, params = import_hf(args.hf_dir, **overrides)
  tok = os.path.join(args.hf_dir, "tokenizer.model")
  checkpoint.save_model(args.out, cfg, params, tokenizer_path=tok if os.path.exists(tok) else None)
  n = sum(x.size for x in _leaves(params))
  print(f"imported {args.hf_dir} -> {args.out}: {n:,} params, {cfg}")
  return 0


def export_main(argv: list[str]) -> int:
  """`gift export-hf --checkpoint CKPT --out DIR [--step S] [--dtype bfloat16]`."""
  p = argparse.ArgumentParser(prog="gift export-hf", description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True, help="gift checkpoint dir")
  p.add_argument("--out", required=True, help="HF model dir to write (must not exist)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES),
                 help="tensor dtype in the safetensors files")
  p.add_argument("--max_shard_gb", type=float, default=4.0, help="shard safetensors above this")
  args = p.parse_args(argv)
  from gift import checkpoint

  cfg, params, tok = checkpoint.load_model(args.checkpoint, step=args.step)
  export_hf(cfg, params, args.out, tokenizer_path=tok, dtype=args.dtype,
            max_shard_bytes=int(args.max_shard_gb * (1 << 30)))
  print(f"exported {args.checkpoint} -> {args.out}")
  return 0


def _leaves(tree: Any) -> list:
  if isinstance(tree, dict):
    return [x for v in tree.values() for x in _leaves(v)]
  return [tree]

