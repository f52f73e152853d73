"""GIFT fine-tuning of the paper's 62B code LLM shape on a TPU pod slice (v4-128 / v5p-128).

  launch/tpu_pod.sh --accelerator v5p-128 --bucket my-bucket --config configs/paper_62b_tpu.py \
    --workdir /mnt/gift/paper62b launch -- --config.init_from=/mnt/gift/ckpt/base_62b \
    --config.data.path=/mnt/gift/data/gift

Memory: 62B f32 parameters + AdamW moments = 16 bytes/parameter ~ 1 TB, sharded over all chips
(fsdp) and 4-way tensor parallelism inside each group; full rematerialization of each layer.
`gift plan --config configs/paper_62b_tpu.py` prints the per-device bytes for a given slice.
Recipe as the authors' open one: lr 2e-5, 10 warm-up steps then cosine, sequences of 2k.
"""
from gift import config as gc


def get_config(arg=None):
  del arg
  c = gc.base_config()
  gc.with_preset(c, "paper_62b", dtype="bfloat16", remat_policy="nothing_saveable")
  gc.open_recipe(c)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 4
  c.train.batch_size = 256  # packed rows: ~524k tokens per step
  c.train.num_steps = 1000
  c.train.grad_clip = 1.0
  c.train.eval_every = 100
  c.train.eval_steps = 4
  c.train.progress = False  # logs from many hosts: metrics.jsonl and TensorBoard instead
  c.checkpoint.every = 100
  c.checkpoint.keep = 2
  return c
