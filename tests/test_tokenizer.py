import json
import pathlib

import pytest

from gift import tokenizer

SOURCE = '''# In[ ]:
import pandas as pd
df = pd.read_csv("sales_2024.csv")

# In[ ]:
def top(df, n=10):
\tif n <= 0:
\t\treturn df.iloc[:0]
        # eight spaces, then a tab:\t and trailing spaces\x20\x20
    return df.nlargest(n, "units")   # 1234567890


# Out[ ]:
#    region  units
# 0  north     12
'''


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> str:
  corpus = [SOURCE * 3, pathlib.Path(tokenizer.__file__).read_text()]
  out = tmp_path_factory.mktemp("spm") / "code"
  return tokenizer.train(corpus, str(out), vocab_size=400)


@pytest.mark.parametrize("text", [
    SOURCE, "\t\t  x = 1\n\n\n", "    " * 5 + "deep()\n", "naïve café 数据 🐼\n",
    "", "\n", " leading space", "a\r\nb"])
def test_trained_model_round_trips_code_exactly(sp_model, text):
  tok = tokenizer.load(sp_model)
  assert tok.decode(tok.encode(text)) == text


def test_cell_marker_is_one_token_and_digits_split(sp_model):
  tok = tokenizer.load(sp_model)
  assert len(tok.encode("# In[ ]:")) == 1
  pieces = [tok.sp.IdToPiece(i) for i in tok.encode("x = 2024")]
  assert pieces[-4:] == ["2", "0", "2", "4"]


def test_special_ids_and_decode_drops_them(sp_model):
  tok = tokenizer.load(sp_model)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  ids = [tok.bos_id] + tok.encode("x = 1") + [tok.eos_id, tok.pad_id]
  assert tok.decode(ids) == "x = 1"


def test_byte_tokenizer_round_trip_and_ids():
  tok = tokenizer.load(None)
  assert tok.vocab_size == 259 and (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.decode([1] + tok.encode(SOURCE + "🐼") + [2]) == SOURCE + "🐼"


def test_vocab_size_check_and_bad_files(sp_model, tmp_path):
  with pytest.raises(ValueError, match="vocab_size"):
    tokenizer.load(sp_model, vocab_size=100)
  bad = tmp_path / "bad.model"
  bad.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="bad.model"):
    tokenizer.load(str(bad))
  with pytest.raises(FileNotFoundError, match="missing.model"):
    tokenizer.load(str(tmp_path / "missing.model"))


def test_directory_loads_its_tokenizer_model(sp_model, tmp_path):
  (tmp_path / "tokenizer.model").write_bytes(pathlib.Path(sp_model).read_bytes())
  assert tokenizer.load(str(tmp_path)).vocab_size == 400


def test_cli_train(tmp_path):
  src = tmp_path / "a.py"
  src.write_text(SOURCE * 2)
  assert tokenizer.main(["train", "--input", str(src), "--vocab_size", "400",
                         "--out", str(tmp_path / "tok")]) == 0
  assert tokenizer.load(str(tmp_path / "tok.model")).vocab_size == 400


def test_sentencepiece_folder_reads_chat_template_and_stop_ids(sp_model, tmp_path):
  """Gemma-style folders: tokenizer.model with tokenizer_config.json (chat template) and
  generation_config.json (several EOS ids)."""
  (tmp_path / "tokenizer.model").write_bytes(pathlib.Path(sp_model).read_bytes())
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": (
      "{{ bos_token }}{% for m in messages %}# In[ ]:\n# {{ m['role'] }}: {{ m['content'] }}"
      "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}# In[ ]:\n{% endif %}")}))
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
  tok = tokenizer.load(str(tmp_path))
  assert isinstance(tok, tokenizer.SentencePieceTokenizer) and tok.stop_ids == (2, 7)
  messages = [{"role": "user", "content": "x = 1 </s> <s>"}]
  text = tokenizer.render_chat(tok, messages)
  assert text == "<s># In[ ]:\n# user: x = 1 </s> <s></s># In[ ]:\n"
  ids = tokenizer.encode_chat(tok, messages)
  assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1 and ids.count(tok.eos_id) == 1
  assert tok.decode(ids) == "# In[ ]:\n# user: x = 1 </s> <s># In[ ]:\n"
  assert tokenizer.prompt_ids(tok, "x")[:1] == [tok.bos_id]  # plain prompts: BOS added
  with pytest.raises(ValueError, match="no chat template"):
    tokenizer.render_chat(tokenizer.load(sp_model), messages)
