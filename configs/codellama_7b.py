"""Fine-tune CodeLlama 7B with GIFT data on one GPU host (e.g. 8 x H100 80 GB).

  gift import-hf --hf_dir /models/CodeLlama-7b-Python-hf --out ckpt/codellama_7b
  launch/gpu_local.sh --config configs/codellama_7b.py --workdir runs/cl7b -- \
    --config.init_from=ckpt/codellama_7b --config.data.path=data/gift

Memory: 6.7B f32 parameters, gradients and AdamW moments = 16 bytes/parameter ~ 108 GB, split
over the host's GPUs (ZeRO-3 style fsdp); each layer fully rematerialized. Check with
`gift plan --config configs/codellama_7b.py --num_devices 8`.
Recipe as the authors' open one: lr 2e-5, 10 warm-up steps then cosine, sequences of 2k tokens,
about 5 epochs (set `train.num_steps` from the example count `gift train` prints).
"""
from gift import config as gc


def get_config(arg=None):
  del arg
  c = gc.base_config()
  gc.with_preset(c, "codellama_7b", dtype="bfloat16", remat_policy="nothing_saveable")
  gc.open_recipe(c)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  c.train.batch_size = 64  # packed rows: ~131k tokens per step
  c.train.grad_accum = 2
  c.train.num_steps = 2000
  return c
