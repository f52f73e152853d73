"""Fine-tune Qwen2.5-Coder-7B with GIFT data on a TPU slice (v5p-32 / v4-32: 16 chips, 4 hosts).

  gift import-hf --hf_dir /models/Qwen2.5-Coder-7B --out /mnt/gift/ckpt/qwen25_coder_7b
  launch/tpu_pod.sh --accelerator v5p-32 --bucket my-bucket \
    --config configs/qwen25_coder_7b_tpu.py --workdir /mnt/gift/qc7b launch -- \
    --config.init_from=/mnt/gift/ckpt/qwen25_coder_7b --config.data.path=/mnt/gift/data/gift

Shape: the `qwen2.5-coder-7b` preset (7.6B parameters). Memory: 16 bytes/parameter ~ 122 GB of
f32 parameters, gradients and AdamW moments, sharded over all chips (fsdp; ~7.6 GB each on 16
chips) with the vocabulary and heads 2-way tensor parallel, which also splits the 152k-vocab f32
logits; full rematerialization of each layer. `gift plan --config configs/qwen25_coder_7b_tpu.py
--num_devices 16` prints the per-chip bytes. Recipe as the authors' open one: lr 2e-5, 10
warm-up steps then cosine, sequences of 2k tokens, about 5 epochs.
"""
from gift import config as gc


def get_config(arg=None):
  del arg
  c = gc.base_config()
  gc.with_preset(c, "qwen2.5-coder-7b", dtype="bfloat16", remat_policy="nothing_saveable")
  gc.open_recipe(c)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 2
  c.train.batch_size = 128  # packed rows of 2048 tokens: ~262k tokens per step
  c.train.grad_accum = 2  # 8 rows per chip per microbatch: fits v4's 32 GB HBM too
  c.train.num_steps = 1000
  c.train.progress = False  # logs from many hosts: metrics.jsonl and TensorBoard instead
  c.train.eval_every = 100
  c.checkpoint.every = 100
  c.checkpoint.keep = 2
  return c
