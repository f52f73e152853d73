"""Fine-tune Qwen2.5-Coder-7B with GIFT data on one GPU host (8 x H100/H200 80+ GB).

  huggingface-cli download Qwen/Qwen2.5-Coder-7B --local-dir /models/Qwen2.5-Coder-7B
  gift import-hf --hf_dir /models/Qwen2.5-Coder-7B --out ckpt/qwen25_coder_7b
  gift build-data --config configs/synth_default.py --workdir data/gift
  launch/gpu_local.sh --config configs/qwen25_coder_7b_gpu.py --workdir runs/qc7b -- \
    --config.init_from=ckpt/qwen25_coder_7b --config.data.path=data/gift

Shape: the `qwen2.5-coder-7b` preset (7.6B parameters: 28 layers, d_model 3584, 28 query / 4
kv heads, q/k/v biases, untied 152k vocabulary), which is what `import-hf` reads from the
checkpoint. Memory: f32 parameters, gradients and AdamW moments = 16 bytes/parameter ~ 122 GB,
split over the host's GPUs (ZeRO-3 style fsdp), each layer rematerialized but its matmul
outputs kept; the 152k-vocabulary f32 logits are the largest activation, hence grad_accum.
Check with `gift plan --config configs/qwen25_coder_7b_gpu.py --num_devices 8`.
Recipe as the authors' open one: lr 2e-5, 10 warm-up steps then cosine, sequences of 2k tokens,
about 5 epochs (set `train.num_steps` from the example count `gift train` prints).
"""
from gift import config as gc


def get_config(arg=None):
  del arg
  c = gc.base_config()
  gc.with_preset(c, "qwen2.5-coder-7b", dtype="bfloat16",
                 remat_policy="dots_with_no_batch_dims_saveable", attention_impl="cudnn")
  gc.open_recipe(c)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  c.train.batch_size = 64  # packed rows of 2048 tokens: ~131k tokens per step
  c.train.grad_accum = 4
  c.train.num_steps = 2000
  return c
