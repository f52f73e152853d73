"""The model-zoo presets have the real shapes: parameter counts within 1% of the published ones,
and each preset builds (its math fields are consistent)."""
import pytest

from gift.model import presets
from gift.model import transformer as tr

# preset: (published parameter count, which count, source). "total" counts every parameter of
# the text model once (tied embeddings once); "non-embedding" leaves out the V x D table(s),
# used where the total is published only to two significant digits, too coarse for 1%.
PUBLISHED = {
    # Model cards, hf.co/Qwen/Qwen2.5-Coder-*: "Number of Parameters".
    "qwen2.5-coder-0.5b": (0.49e9, "total", "hf.co/Qwen/Qwen2.5-Coder-0.5B model card"),
    "qwen2.5-coder-1.5b": (1.54e9, "total", "hf.co/Qwen/Qwen2.5-Coder-1.5B model card"),
    "qwen2.5-coder-7b": (7.61e9, "total", "hf.co/Qwen/Qwen2.5-Coder-7B model card"),
    "qwen2.5-coder-14b": (14.7e9, "total", "hf.co/Qwen/Qwen2.5-Coder-14B model card"),
    "qwen2.5-coder-32b": (32.5e9, "total", "hf.co/Qwen/Qwen2.5-Coder-32B model card"),
    # Model cards, hf.co/Qwen/Qwen3-*: "Number of Parameters" (and "Non-Embedding").
    "qwen3-0.6b": (0.6e9, "total", "hf.co/Qwen/Qwen3-0.6B model card"),
    "qwen3-1.7b": (1.4e9, "non-embedding", "hf.co/Qwen/Qwen3-1.7B model card (1.7B total)"),
    "qwen3-4b": (4.0e9, "total", "hf.co/Qwen/Qwen3-4B model card"),
    "qwen3-8b": (8.2e9, "total", "hf.co/Qwen/Qwen3-8B model card"),
    "qwen3-14b": (14.8e9, "total", "hf.co/Qwen/Qwen3-14B model card"),
    "qwen3-32b": (32.8e9, "total", "hf.co/Qwen/Qwen3-32B model card"),
    # Meta's model cards (hf.co/meta-llama/...): "Params" 1.23B / 3.21B / 8.03B.
    "llama3.2-1b": (1.23e9, "total", "hf.co/meta-llama/Llama-3.2-1B model card"),
    "llama3.2-3b": (3.21e9, "total", "hf.co/meta-llama/Llama-3.2-3B model card"),
    "llama3.1-8b": (8.03e9, "total", "hf.co/meta-llama/Llama-3.1-8B model card"),
    # hf.co/deepseek-ai/deepseek-coder-*-base: the hub's "Model size" (safetensors) figure.
    "deepseek-coder-1.3b": (1.35e9, "total", "hf.co/deepseek-ai/deepseek-coder-1.3b-base"),
    "deepseek-coder-6.7b": (6.74e9, "total", "hf.co/deepseek-ai/deepseek-coder-6.7b-base"),
    "deepseek-coder-33b": (33.3e9, "total", "hf.co/deepseek-ai/deepseek-coder-33b-base"),
    # Gemma 2 technical report (arXiv 2408.00118), Table 2: embedding + non-embedding.
    "gemma2-2b": (590_118_912 + 2_024_517_888, "total", "Gemma 2 report, Table 2"),
    "gemma2-9b": (917_962_752 + 8_324_201_984, "total", "Gemma 2 report, Table 2"),
    "gemma2-27b": (1_180_237_824 + 26_047_480_320, "total", "Gemma 2 report, Table 2"),
    # Gemma 3 technical report (arXiv 2503.19786), Table 1: embedding + non-embedding (the
    # 417M vision encoder of 4B-27B is not part of the text model); 270M from its model card.
    "gemma3-270m": (170e6 + 100e6, "total", "hf.co/google/gemma-3-270m model card"),
    "gemma3-1b": (302e6 + 698e6, "total", "Gemma 3 report, Table 1"),
    "gemma3-4b": (675e6 + 3_209e6, "total", "Gemma 3 report, Table 1"),
    "gemma3-12b": (1_012e6 + 10_759e6, "total", "Gemma 3 report, Table 1"),
    "gemma3-27b": (1_416e6 + 25_600e6, "total", "Gemma 3 report, Table 1"),
    # hf.co/bigcode/starcoder2-*: the hub's "Model size" figure.
    "starcoder2-3b": (3.03e9, "total", "hf.co/bigcode/starcoder2-3b"),
    "starcoder2-7b": (7.17e9, "total", "hf.co/bigcode/starcoder2-7b"),
    "starcoder2-15b": (15.96e9, "total", "hf.co/bigcode/starcoder2-15b"),
}


def test_every_issue_preset_is_listed():
  assert set(PUBLISHED) <= set(presets.PRESETS)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_within_one_percent_of_published(name):
  cfg = presets.get_preset(name)
  published, kind, source = PUBLISHED[name]
  count = tr.param_count(cfg)
  if kind == "non-embedding":
    count -= cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
  assert abs(count - published) / published < 0.01, (name, count, published, source)
