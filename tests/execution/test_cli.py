"""`gift exec` prints one JSON verdict and exits 0 only for ok."""
import json

from gift.execution import cli, codec


def test_exec_prints_the_verdict_as_json(tmp_path, capsys):
  (tmp_path / "ctx.py").write_text("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})\n")
  (tmp_path / "code.py").write_text("import os\nprint(os.environ['FOO'])\ndf.a.sum() * 2\n")
  rc = cli.main(["--context", str(tmp_path / "ctx.py"), "--code", str(tmp_path / "code.py"),
                 "--output_var", "", "--env", "FOO=bar", "--timeout_s", "5"])
  out = json.loads(capsys.readouterr().out)
  assert rc == 0 and out["status"] == "ok" and out["stdout"] == "bar\n"
  assert codec.decode(json.dumps(out["result"]).encode()) == 6


def test_exec_reports_failures_and_bad_arguments(tmp_path, capsys):
  (tmp_path / "code.py").write_text("result = (")
  assert cli.main(["--code", str(tmp_path / "code.py")]) == 1
  assert json.loads(capsys.readouterr().out)["status"] == "syntax_error"
  assert cli.main(["--code", str(tmp_path / "code.py"), "--env", "NOEQUALS"]) == 2
  assert cli.main(["--code", str(tmp_path / "missing.py")]) == 2
