"""DS-1000 harness: upstream semantics, post-processing, specs, and checking no candidate can fool.

Fast tests run a handful of problems under the current interpreter (pandas 3.x), picked among
those whose references pass there; the full 291 in the pinned runtime are `slow`.
"""
import json
import subprocess
import sys

import pytest

from gift.eval import cli, ds1000
from gift.execution.sandbox import Sandbox

# plain, plain, function slot (its specs once crashed `render`), tz-aware input (pandas 1.5 gives
# pytz.FixedOffset), interval categories, two result variables, range(1) != test_case_cnt
IDS = [0, 1, 4, 11, 229, 188, 268]


@pytest.fixture(scope="module")
def data(shared_dir):
  return str(shared_dir / "datasets" / "ds1000" / "ds1000_pandas.jsonl")


@pytest.fixture(scope="module")
def problems(data):
  return ds1000.load(data, IDS)


@pytest.fixture(scope="module")
def sandbox():
  with Sandbox(num_workers=2, timeout_s=30) as sb:
    yield sb


@pytest.fixture(scope="module")
def cases(sandbox, problems):
  return ds1000.generate_cases(sandbox, problems)


def test_load_reads_the_upstream_harness(data):
  problems = ds1000.load(data)
  assert len(problems) == 291
  by_id = {p.problem_id: p for p in problems}
  assert sum(p.has_test_string for p in problems) == 30
  assert by_id[0].input_names == ("df", "List")
  assert by_id[268].num_tests == 1  # its define_test_input has a range(20) of its own
  assert {p.perturbation_type for p in problems} == set(ds1000.PERTURBATIONS)


@pytest.mark.parametrize("raw,want", [
    ("result = df.iloc[List]\n</code>\nEND SOLUTION", "result = df.iloc[List]\n"),
    ("```python\nresult = 1\n```\nmore text", "\nresult = 1\n"),
    ("<code>\nresult = 2\n</code>\nEND SOLUTION\n</code>", "\nresult = 2\n"),
    ("    return df\n    # SOLUTION END\nprint(f())", "    return df\n    "),
    ("result = 3\nEND SOLUTION\nresult = 4", "result = 3"),
    (["result = 5\n</code>", "ignored"], "result = 5\n"),
])
def test_postprocess_cuts_like_upstream(raw, want):
  assert ds1000.postprocess(raw) == want


def test_spec_goes_at_the_start_of_the_solution_slot(problems):
  by_id = {p.problem_id: p for p in problems}
  assert ds1000.build_prompt(by_id[0], "none", "ignored") == by_id[0].prompt
  plain = ds1000.build_prompt(by_id[0], "typedesc", "df: DataFrame")
  assert plain == by_id[0].prompt + "# Specification (variable types):\n# df: DataFrame\n"
  func = ds1000.build_prompt(by_id[4], "io_summary", "The output is a DataFrame.")
  assert func.endswith("### BEGIN SOLUTION\n    # Specification (I/O summary):\n"
                       "    # The output is a DataFrame.\n")


def test_references_pass_and_wrong_answers_fail(sandbox, problems, cases):
  refs = {p.problem_id: [p.reference_code] for p in problems}
  outs = ds1000.score(sandbox, problems, refs, cases)
  assert all(o[0].passed for o in outs.values()), {k: o[0].error for k, o in outs.items()}
  wrong = {0: ["result = df"], 188: ["result1, result2 = df, df"]}
  outs = ds1000.score(sandbox, problems, wrong, cases)
  assert [o[0].stage for o in outs.values()] == ["checker", "checker"]


CHEATS = {
    "patches pandas.testing": (
        "import pandas.testing\npandas.testing.assert_frame_equal = lambda *a, **k: None\n"
        "result = df\n"),
    "steals the expected answer through gc": (
        "import gc\nimport pandas as pd\n"
        "frames = [o for o in gc.get_objects() if isinstance(o, pd.DataFrame) and o is not df]\n"
        "result = frames[-1] if frames else df\n"),
    "walks the frames for expected_result": (
        "import sys\nf, result = sys._getframe(), df\n"
        "while f is not None:\n"
        "  result = f.f_locals.get('expected_result', result)\n  f = f.f_back\n"),
    "returns an object equal to anything": (
        "class Any_:\n  def __eq__(self, other):\n    return True\nresult = Any_()\n"),
}


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_cheating_candidates_fail(sandbox, problems, cases, name):
  p0 = [p for p in problems if p.problem_id == 0]
  out = ds1000.score(sandbox, p0, {0: [CHEATS[name]]}, cases)[0][0]
  assert not out.passed, (name, out)


def test_the_patch_cheat_fools_the_in_process_upstream_protocol(problems):
  """The same cheat passes when candidate and checker share a process: the jobs matter."""
  p = problems[0]
  program = (p.code_context + f"\ncode = {CHEATS['patches pandas.testing']!r}\n"
             "test_execution(code)\n")
  assert subprocess.run([sys.executable, "-c", program], capture_output=True).returncode == 0


def test_specs_from_the_reference_result(sandbox, problems, cases):
  oracle, specs = ds1000.oracle(sandbox, problems, cases)
  assert all(o.passed for o in oracle.values())
  td = specs[0]["typedesc"]
  assert "df: DataFrame (6 rows x 4 columns)" in td and "List: ndarray" in td
  assert "result: DataFrame" in td
  assert "Input df:" in specs[0]["io_examples"]
  assert specs[0]["none"] == "" and "DataFrame" in specs[4]["io_summary"]
  assert not [k for s in specs.values() for k in s if k.startswith("error:")], specs


def test_answers_file_scores_a_subset_and_writes_the_report(tmp_path, data):
  answers = tmp_path / "answers.jsonl"
  with open(answers, "w") as f:
    for p in ds1000.load(data, range(5)):  # references for even ids, a wrong answer for odd ones
      code = p.reference_code if p.problem_id % 2 == 0 else "result = None\n"
      f.write(json.dumps({"code": code, "metadata": {"problem_id": p.problem_id}}) + "\n")
  work = tmp_path / "work"
  assert cli.main(["ds1000", "--dataset", str(data), "--answers", str(answers), "--limit", "5",
                   "--workdir", str(work), "--no_progress", "--num_workers", "2"]) == 0
  results = json.loads((work / "results.json").read_text())
  per = results["runs"]["answers"]["per_problem"]
  assert per == {"0": [1, 1], "1": [1, 0], "2": [1, 1], "3": [1, 0], "4": [1, 1]}
  assert results["runtime"]["packages"]["pandas"] and results["timing"]["problems"] == 5
  assert (work / "report.md").exists() and (work / "pass_at_k.png").exists()
