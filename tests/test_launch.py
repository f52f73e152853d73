"""Launch scripts: syntax, shellcheck, and --dry-run printing every command they would run."""
import os
import shutil
import subprocess

import pytest

SCRIPTS = ("launch/tpu_pod.sh", "launch/gpu_local.sh", "launch/slurm_gpu.sbatch")


def _run(repo_root, *args):
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  return subprocess.run(["bash", *args], cwd=repo_root, capture_output=True, text=True,
                        timeout=60, env=env)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_with_bash_n(repo_root, script):
  out = _run(repo_root, "-n", script)
  assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_passes_shellcheck(repo_root, script):
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (CI installs the Debian package `shellcheck`)")
  out = subprocess.run(["shellcheck", script], cwd=repo_root, capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr


def test_tpu_pod_dry_run_prints_the_whole_lifecycle(repo_root):
  out = _run(repo_root, "launch/tpu_pod.sh", "--dry-run", "--name", "pod1", "--accelerator",
             "v5p-64", "--bucket", "bkt", "launch", "logs", "delete", "--",
             "--config.train.lr=2e-5")
  assert out.returncode == 0, out.stderr
  lines = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
  text = "\n".join(lines)
  assert "tpu-vm create pod1" in lines[0] and "--accelerator-type=v5p-64" in lines[0]
  assert "git -C" in text and "archive" in text and "tpu-vm scp" in text
  assert "--worker=all" in text and "pip\\ install" in text and "gcsfuse" in text
  train = next(line for line in lines if "gift.cli\\ train" in line)
  assert "--worker=all" in train and "nohup" in train and "gift_train.log" in train
  assert "--config.train.lr=2e-5" in train
  assert "tpu-vm delete pod1" in lines[-1]


def test_tpu_pod_queued_resource_dry_run(repo_root):
  out = _run(repo_root, "launch/tpu_pod.sh", "--dry-run", "--queued", "--spot", "create",
             "delete")
  assert out.returncode == 0, out.stderr
  assert "queued-resources create gift-tpu" in out.stdout and "--spot" in out.stdout
  assert "until ACTIVE" in out.stdout and "queued-resources delete" in out.stdout


def test_gpu_local_dry_run(repo_root):
  out = _run(repo_root, "launch/gpu_local.sh", "--dry-run", "--gpus", "0,1", "--workdir", "w",
             "--", "--config.train.num_steps=3")
  assert out.returncode == 0, out.stderr
  last = out.stdout.strip().splitlines()[-1]
  assert "CUDA_VISIBLE_DEVICES=0\\,1" in last and "gift.cli train" in last
  assert "--workdir=w" in last and "--config.train.num_steps=3" in last


def test_slurm_dry_run_uses_an_explicit_coordinator(repo_root):
  out = _run(repo_root, "launch/slurm_gpu.sbatch", "--dry-run", "--port", "2222")
  assert out.returncode == 0, out.stderr
  assert "JAX_COORDINATOR_ADDRESS=gpu-node01:2222" in out.stdout
  assert "srun --nodes=2" in out.stdout and "--config.distributed.initialize=yes" in out.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_argument_fails_with_usage_hint(repo_root, script):
  out = _run(repo_root, script, "--bogus")
  assert out.returncode == 2 and "--bogus" in out.stderr


def test_slurm_script_refuses_to_run_outside_slurm(repo_root):
  out = _run(repo_root, "launch/slurm_gpu.sbatch")
  assert out.returncode == 2 and "sbatch" in out.stderr
