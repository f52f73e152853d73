"""Test setup: 8 fake CPU devices (set before JAX is imported) and shared fixtures."""
import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  if not SHARED.is_dir():
    pytest.skip(f"shared data folder {SHARED} is not present beside the checkout")
  return SHARED


# ---------------------------------------------------------------------------------------------
# Tiny Hugging Face tokenizers (byte-level BPE), built with the `tokenizers` library and saved
# by transformers, like the folders of real checkpoints.
# ---------------------------------------------------------------------------------------------
TOKENIZER_CORPUS = [
    "import pandas as pd\ndf = pd.read_csv('sales.csv')\nprint(df.head())\n",
    "def total(df, n=10):\n    return df.groupby('region')['units'].sum().nlargest(n)\n",
    "naïve café 数据 über straße — “quotes” 🐼🚀\n\tindented\r\n",
    "# In[ ]:\n# Total units per region, largest first.\nresult = df['units'].sum()\n",
] * 30
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA2_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
               "{{ '[INST] ' + m['content'] | trim + ' [/INST]' }}{% else %}"
               "{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}")
LLAMA3_CHAT = ("{{- bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + "
               "message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + "
               "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def build_hf_tokenizer(out_dir, kind: str, vocab_size: int = 400) -> str:
  """A Qwen-like ("qwen": no BOS, `<|endoftext|>` and `<|im_end|>` EOS ids, ChatML),
  Llama-3-like ("llama3": BOS added by the post-processor, two EOS ids) or Llama-2-like
  ("llama2": SentencePiece-style BPE with a Metaspace pre-tokenizer, `add_bos_token`)
  tokenizer folder."""
  import json

  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

  if kind == "llama2":
    from tokenizers import SentencePieceBPETokenizer
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(TOKENIZER_CORPUS + ["<s> </s> [INST] a/b"], vocab_size=vocab_size,
                           special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=sp._tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        add_bos_token=True, chat_template=LLAMA2_CHAT)
    fast.save_pretrained(str(out_dir))
    return str(out_dir)
  specials = {"qwen": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                         "<|end_header_id|>", "<|eot_id|>"]}[kind]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(TOKENIZER_CORPUS, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=specials, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  if kind == "qwen":
    tok.add_tokens(["<think>"])  # a non-special added token (Qwen3 has such)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=CHATML)
    eos = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
  else:
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        chat_template=LLAMA3_CHAT)
    eos = [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]
  fast.save_pretrained(str(out_dir))
  with open(os.path.join(str(out_dir), "generation_config.json"), "w") as f:
    json.dump({"eos_token_id": eos, "do_sample": True}, f)
  return str(out_dir)


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory) -> str:
  pytest.importorskip("transformers")
  return build_hf_tokenizer(tmp_path_factory.mktemp("qwen_tok"), "qwen")


@pytest.fixture(scope="session")
def llama2_tokenizer_dir(tmp_path_factory) -> str:
  pytest.importorskip("transformers")
  return build_hf_tokenizer(tmp_path_factory.mktemp("llama2_tok"), "llama2")


@pytest.fixture(scope="session")
def llama3_tokenizer_dir(tmp_path_factory) -> str:
  pytest.importorskip("transformers")
  return build_hf_tokenizer(tmp_path_factory.mktemp("llama3_tok"), "llama3")
