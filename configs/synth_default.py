"""The default GIFT data build: bundled offline contexts, the `templates` backend.

  gift build-data --config configs/synth_default.py --workdir /tmp/gift_data
  gift build-data --config configs/synth_default.py --workdir W --config.synth.contexts="('d/',)"

Options: `configs/synth_default.py:small` builds from 3 contexts (a quick look, tests)."""
from gift import config as gc


def get_config(arg=None):
  c = gc.base_config()
  c.synth.contexts = ("bundled",)
  c.synth.backend = "templates"
  c.synth.intents_per_context = 96
  c.synth.samples_per_intent = 3
  if arg == "small":
    c.synth.num_bundled = 3
    c.synth.bundled_real = False
    c.synth.intents_per_context = 24
  return c
