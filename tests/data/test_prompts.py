import pytest

from gift.data import prompts

REC = {"id": "r1",
       "context": prompts.code_cell("import pandas as pd\ndf = pd.DataFrame({'a': [1]})")
       + prompts.code_cell("df.head()", "   a\n0  1"),
       "intent": "Sum column a.", "code": "result = df['a'].sum()",
       "spec_typedesc": "df: DataFrame(1x1; a:int64)\nresult: int", "spec_io_examples": "",
       "spec_io_summary": "The output is an integer."}


def test_prompt_is_context_then_instruction_and_target_is_code():
  r = prompts.render(REC, "typedesc")
  assert r.prompt.startswith("# In[ ]:\nimport pandas")
  assert r.prompt.endswith("# Specification (variable types):\n# df: DataFrame(1x1; a:int64)\n"
                           "# result: int\n")
  assert "# Out[ ]:\n#    a\n# 0  1" in r.context
  assert r.target == "result = df['a'].sum()\n"


def test_none_spec_and_no_context_baseline():
  r = prompts.render(REC, "none", context="none")
  assert r.context == "" and "Specification" not in r.prompt
  assert r.instruction == "# In[ ]:\n# Sum column a.\n"


def test_empty_spec_renders_nothing():
  assert "Specification" not in prompts.render(REC, "io_examples").prompt


def test_bad_spec_kind_and_missing_field():
  with pytest.raises(ValueError, match="spec kind"):
    prompts.render(REC, "oracle")
  with pytest.raises(KeyError, match="code"):
    prompts.render({"id": "x", "intent": "y"})


def test_cut_at_stop():
  assert prompts.cut_at_stop("x = 1\n\n# In[ ]:\ny = 2") == "x = 1\n"
  assert prompts.cut_at_stop("# In[ ]:\n") == ""
