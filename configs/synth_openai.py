"""GIFT data from an OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama) for both roles.

  gift build-data --config configs/synth_openai.py --workdir W \
      --config.synth.openai.base_url=http://127.0.0.1:8000/v1 --config.synth.openai.model=NAME
"""
from gift import config as gc


def get_config(arg=None):
  c = gc.base_config()
  c.synth.backend = "openai"
  c.synth.openai.base_url = "http://127.0.0.1:8000/v1"
  c.synth.openai.model = "default"
  c.synth.intents_per_context = 16
  c.synth.samples_per_intent = 5  # the paper samples several candidates per intent
  c.synth.temperature = 0.8
  return c
