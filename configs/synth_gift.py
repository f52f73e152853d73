"""GIFT data with a gift checkpoint as generalist and coder (the paper's code-LLM role).

  gift build-data --config configs/synth_gift.py --workdir W --config.synth.gift.checkpoint=CKPT
"""
from gift import config as gc


def get_config(arg=None):
  c = gc.base_config()
  c.synth.backend = "gift"
  c.synth.intents_per_context = 16
  c.synth.samples_per_intent = 5
  c.synth.temperature = 0.8
  return c
