"""LoRA / QLoRA fine-tuning of Qwen2.5-Coder-7B with GIFT data on ONE GPU.

  gift import-hf --hf_dir /models/Qwen2.5-Coder-7B --out ckpt/qwen2_5_coder_7b
  gift train --config configs/qwen2_5_coder_7b_lora.py --workdir runs/qwen7b_lora \
    --config.init_from=ckpt/qwen2_5_coder_7b --config.data.path=data/gift       # 24 GB GPU
  gift train --config configs/qwen2_5_coder_7b_lora.py:qlora ...                  # 16 GB GPU
  gift export-hf --checkpoint runs/qwen7b_lora --out adapter --adapter_only      # PEFT adapter

`:lora` (default): frozen bf16 base (15.2 GB) + rank-16 adapters on every attention and MLP
projection (40M f32 parameters with their gradients and AdamW moments: 0.65 GB). `:qlora`: the
projections stored NF4 (block 64; 3.7 GB) beside the bf16 embedding and unembedding (2.2 GB).
Both: one 2k-token packed row per microbatch, 16 microbatches per step (32k tokens), every layer
rematerialized. `gift plan --config configs/qwen2_5_coder_7b_lora.py[:qlora] --compile` prints
the states per device and the compiled step's peak memory (numbers in the README).

The model shape is written out here (Qwen2: q/k/v biases, GQA 28/4 heads, theta 1e6); it equals
`gift import-hf`'s config of Qwen/Qwen2.5-Coder-7B (init_from checks that the shapes match).
Recipe as the open one (lr scaled for adapters: 2e-4, as QLoRA and PEFT recipes use).
"""
import ml_collections

from gift import config as gc
from gift.model import presets

QWEN2_5_CODER_7B = dict(
    vocab_size=152064, num_layers=28, d_model=3584, num_heads=28, num_kv_heads=4, head_dim=128,
    mlp_dim=18944, mlp_activation="silu", tie_embeddings=False, norm_eps=1e-6,
    rope_theta=1000000.0, max_seq_len=32768, qkv_bias=True)


def get_config(arg=None):
  kind = arg or "lora"
  if kind not in ("lora", "qlora"):
    raise ValueError(f"configs/qwen2_5_coder_7b_lora.py:{kind}; expected :lora or :qlora")
  c = gc.base_config()
  shape = presets.ModelConfig(**QWEN2_5_CODER_7B, dtype="bfloat16", remat_policy="full")
  c.model = ml_collections.ConfigDict(dict(preset="qwen2_5_coder_7b", **shape.to_dict()))
  gc.open_recipe(c)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1  # one GPU
  c.train.peft = kind
  c.lora.rank, c.lora.alpha, c.lora.dropout = 16, 32.0, 0.05
  c.lora.quant = "nf4"
  c.train.lr = 2e-4
  c.train.weight_decay = 0.0
  c.train.batch_size = 16  # packed 2k-token rows per step
  c.train.grad_accum = 16  # one row per microbatch
  c.train.num_steps = 1000
  return c
