"""ARCADE-format episodes: built from GIFT records, read back, prompted both ways, scored
leniently against the reference output."""
import json
import types

import pandas as pd
import pytest

from gift.eval import arcade
from gift.execution import compare
from gift.execution.sandbox import Sandbox


def _records():
  base = {"context_id": "csv/sales", "context": "# In[ ]:\nimport pandas as pd\n\n",
          "spec_typedesc": "Inputs:\ndf: DataFrame", "spec_io_examples": "",
          "spec_io_summary": "The output is a Series.", "output_repr": "", "variables": "{}"}
  return [
      dict(base, id="csv/sales/0/0", intent="Total units per region.",
           code="result = df.groupby('region')['units'].sum()",
           meta=json.dumps({"output_var": "result"})),
      dict(base, id="csv/sales/0/1", intent="Total units per region.", code="other sample",
           meta="{}"),  # a second sample of the same intent: not a second turn
      dict(base, id="csv/sales/1/0", intent="The number of rows.", code="len(df)",
           meta=json.dumps({"output_var": None})),
  ]


@pytest.fixture(scope="module")
def episode_file(tmp_path_factory):
  df = pd.DataFrame({"region": ["n", "s", "n"], "units": [1, 2, 3]})
  ctx = types.SimpleNamespace(code="import pandas as pd\ndf = df.copy()", inputs={"df": df})
  path = str(tmp_path_factory.mktemp("arcade") / "episodes.json")
  arcade.build_episodes(_records(), {"csv/sales": ctx}, path)
  return path


def test_episodes_round_trip_in_arcade_format(episode_file):
  episodes = arcade.load(episode_file)
  assert [e["notebook_name"] for e in episodes] == ["csv/sales"]
  turn = episodes[0]["turns"][0]
  assert turn["turn"]["code"]["value"].startswith("result = df.groupby")
  assert turn["turn"]["intent"]["value"] == "Total units per region."
  assert turn["turn"]["code_context"].startswith("import pandas")
  assert turn["input"].endswith("# Total units per region.\n")
  tasks = arcade.tasks(episodes)
  assert [t.task_id for t in tasks] == ["csv/sales/0", "csv/sales/1"]
  assert tasks[0].inputs["df"]["units"].tolist() == [1, 2, 3]


def test_full_and_no_context_prompts(episode_file):
  full = arcade.tasks(arcade.load(episode_file), "full")[0]
  none = arcade.tasks(arcade.load(episode_file), "none")[0]
  assert full.prompt().startswith("# In[ ]:\nimport pandas as pd\n\n# In[ ]:\n# Total units")
  assert none.prompt() == "# In[ ]:\n# Total units per region.\n"
  assert "# The output is a Series." in full.prompt("io_summary")


def test_real_arcade_turns_use_their_input_as_the_prompt(tmp_path):
  path = tmp_path / "real.json"
  path.write_text(json.dumps([{"notebook_name": "nb", "turns": [{
      "input": "# In[ ]:\nx = 1\n\n# In[ ]:\n# add one\n",
      "turn": {"intent": {"value": "add one"}, "code": {"value": "x + 1"},
               "code_context": "x = 1"}, "metadata": {}}]}]))
  task = arcade.tasks(arcade.load(str(path)))[0]
  assert task.prompt() == "# In[ ]:\nx = 1\n\n# In[ ]:\n# add one\n"
  with pytest.raises(ValueError, match="no typedesc spec"):
    task.prompt("typedesc")
  with Sandbox(num_workers=1) as sb:
    refs = arcade.reference_outputs(sb, [task])
    assert refs["nb/0"].value == 2
    assert arcade.score(sb, [task], {"nb/0": ["x + 1.0000001", "x"]}, refs) == {
        "nb/0": [True, False]}


def test_lenient_scoring_of_notebook_tasks(episode_file):
  tasks = arcade.tasks(arcade.load(episode_file))
  cands = {"csv/sales/0": [
      "result = df.groupby('region')['units'].sum()",                  # the reference
      "df.groupby('region')[['units']].sum()",                         # a one-column frame
      "result = df.groupby('region').agg(total=('units', 'sum'))",     # another column name
      "result = df.groupby('region')['units'].mean()"],                # wrong
      "csv/sales/1": ["df.shape[0]", "len(df) + 1"]}
  with Sandbox(num_workers=2) as sb:
    refs = arcade.reference_outputs(sb, tasks)
    assert all(isinstance(r, arcade.Output) for r in refs.values())
    passed = arcade.score(sb, tasks, cands, refs)
    strict = arcade.score(sb, tasks, cands, refs, rules=compare.EXACT)
  assert passed == {"csv/sales/0": [True, True, True, False], "csv/sales/1": [True, False]}
  assert strict["csv/sales/0"] == [True, False, False, False]
