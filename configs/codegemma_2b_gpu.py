"""Fine-tune CodeGemma 2B with GIFT data on one GPU host (e.g. 8 x H100 80 GB).

  gift import-hf --hf_dir /models/codegemma-2b --out ckpt/codegemma_2b
  gift build-data --config configs/synth_default.py --workdir data/gift
  launch/gpu_local.sh --config configs/codegemma_2b_gpu.py --workdir runs/cg2b -- \
    --config.init_from=ckpt/codegemma_2b --config.data.path=data/gift

The recipe follows the authors' open one: lr 2e-5, cosine decay after 10 warm-up steps, about
5 epochs, sequences of 2k tokens. Set `train.num_steps` to about
5 x examples / (batch_size x examples per packed row); `gift train` prints the example count,
and `examples_dropped` in metrics.jsonl counts examples too long for `data.seq_len`.
The argument picks the model size: `configs/codegemma_2b_gpu.py:7b` for CodeGemma 7B.
"""
from gift import config as gc


def get_config(arg=None):
  size = arg or "2b"
  c = gc.base_config()
  gc.with_preset(c, f"codegemma_{size}", dtype="bfloat16",
                 remat_policy="dots_with_no_batch_dims_saveable")
  gc.open_recipe(c)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1  # ZeRO-3 over the host's GPUs
  c.train.batch_size = 64  # packed rows of 2048 tokens: ~131k tokens per step
  c.train.grad_accum = 1 if size == "2b" else 4
  c.train.num_steps = 2000
  c.train.b2 = 0.999
  return c
