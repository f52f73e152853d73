"""Tiny model and data for tests: runs in seconds on CPU.

  gift train --config=configs/test_tiny.py --workdir=/tmp/tiny \
    --config.data.source=jsonl --config.data.path=my.jsonl
"""
from gift import config as gc


def get_config(arg=None):
  del arg
  c = gc.base_config()
  gc.with_preset(c, "test_tiny")
  c.data.seq_len = 128
  c.train.batch_size = 8
  c.train.num_steps = 20
  c.train.warmup_steps = 2
  c.train.log_every = 5
  c.train.eval_steps = 2
  c.train.progress = False
  c.checkpoint.every = 10
  c.checkpoint.keep = 2
  c.checkpoint.async_save = False
  return c
