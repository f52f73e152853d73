"""gift.beam: the runner is pinned on one machine (never Prism), cluster runners are left to
Beam, `--require_isolation` stops a run on a sandbox that lacks a layer, and element retries."""
import pytest

from gift import beam as beam_lib
from gift.execution.sandbox import Sandbox


def test_local_runs_pin_the_multiprocess_fnapi_runner():
  pytest.importorskip("apache_beam", reason="apache-beam is not installed")
  from apache_beam.options import pipeline_options as po
  from apache_beam.runners.portability.fn_api_runner import fn_runner

  runner, options = beam_lib.pipeline_options("")
  direct = options.view_as(po.DirectOptions)
  assert isinstance(runner, fn_runner.FnApiRunner)
  assert (direct.direct_running_mode, direct.direct_num_workers) == ("multi_processing", 2)
  runner, options = beam_lib.pipeline_options("--runner=DirectRunner --direct_num_workers=4")
  assert isinstance(runner, fn_runner.FnApiRunner)
  assert options.view_as(po.DirectOptions).direct_num_workers == 4
  runner, options = beam_lib.pipeline_options(
      "--runner=FlinkRunner --flink_master=localhost:8081 --parallelism=8")
  assert runner is None and options.view_as(po.StandardOptions).runner == "FlinkRunner"


def test_require_isolation_names_the_missing_layers():
  with Sandbox(num_workers=1, namespaces=False, timeout_s=5.0) as sandbox:
    beam_lib.check_isolation(sandbox, required=False)  # only a warning at start-up
    with pytest.raises(RuntimeError, match="require_isolation.*pid namespace"):
      beam_lib.check_isolation(sandbox, required=True)


def test_an_element_failing_once_is_retried_once(tmp_path, monkeypatch):
  pytest.importorskip("apache_beam", reason="apache-beam is not installed")
  monkeypatch.setenv(beam_lib.FAULT_ENV, f"ctx/a|1|{tmp_path / 'count'}")
  calls = []
  assert beam_lib.with_retries("ctx/a", lambda: calls.append(1) or "done") == "done"
  assert calls == [1] and len((tmp_path / "count").read_text().split()) == 2
  monkeypatch.setenv(beam_lib.FAULT_ENV, f"ctx/b|9|{tmp_path / 'count_b'}")
  with pytest.raises(RuntimeError, match="injected fault on ctx/b"):
    beam_lib.with_retries("ctx/b", lambda: "never")
  assert len((tmp_path / "count_b").read_text().split()) == beam_lib.MAX_ATTEMPTS
