"""Multi-process start-up decisions, and a real 2-process x 4-CPU-device run over gloo."""
import ml_collections
import pytest

from gift import config as gc
from gift import distributed


def _cfg(**kw):
  c = ml_collections.ConfigDict(gc.base_config().distributed.to_dict())
  c.update(kw)
  return c


def test_single_process_by_default():
  assert distributed.plan(_cfg(), {}) is None
  assert distributed.plan(_cfg(initialize="no"), {"SLURM_STEP_ID": "0", "SLURM_NTASKS": "4"}) \
      is None


def test_explicit_coordinator_from_config():
  kw = distributed.plan(_cfg(coordinator_address="10.0.0.1:1234", num_processes=2,
                             process_id=1, local_device_ids="0,1"), {})
  assert kw == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1,
                "local_device_ids": [0, 1]}


def test_slurm_step_with_exported_coordinator():
  env = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "4", "SLURM_PROCID": "3",
         "JAX_COORDINATOR_ADDRESS": "node01:12355"}
  assert distributed.plan(_cfg(), env) == {"coordinator_address": "node01:12355",
                                           "num_processes": 4, "process_id": 3}


def test_slurm_batch_script_itself_stays_single_process():
  assert distributed.plan(_cfg(), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) is None


def test_tpu_pod_lets_jax_detect_everything():
  env = {"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"}
  assert distributed.plan(_cfg(), env) == {}
  assert distributed.plan(_cfg(), {"TPU_WORKER_HOSTNAMES": "localhost"}) is None


def test_coordinator_without_process_count_is_an_error():
  with pytest.raises(ValueError, match="num_processes"):
    distributed.plan(_cfg(initialize="yes", coordinator_address="h:1"), {})


def test_bad_mode_and_device_ids_are_errors():
  with pytest.raises(ValueError, match="distributed.initialize"):
    distributed.plan(_cfg(initialize="maybe"), {})
  with pytest.raises(ValueError, match="local_device_ids"):
    distributed.plan(_cfg(initialize="yes", local_device_ids="a,b"), {})
