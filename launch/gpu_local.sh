#!/usr/bin/env bash
# Train (or debug) with gift on one host using all of its GPUs: one process, every local GPU in
# the mesh (the config's `mesh` decides how they are split between data, fsdp and tensor).
#
# usage: launch/gpu_local.sh [options] [-- <extra gift train args>]
#   --config FILE (configs/codegemma_2b_gpu.py)  --workdir DIR (runs/local)
#   --gpus 0,1     use only these GPUs (CUDA_VISIBLE_DEVICES); default: all
#   --install      first pip-install gift and jax[cuda12] into the current Python
#   --debug        NaN checks and synchronous dispatch (slow; finds the failing op)
#   --dry-run      print every command, run nothing
# Re-running with the same workdir resumes from the latest checkpoint; Ctrl-C or SIGTERM saves one.
set -euo pipefail

CONFIG=configs/codegemma_2b_gpu.py WORKDIR=runs/local GPUS="" INSTALL=0 DEBUG=0 DRY_RUN=0
EXTRA=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --config) CONFIG=$2; shift ;;
    --workdir) WORKDIR=$2; shift ;;
    --gpus) GPUS=$2; shift ;;
    --install) INSTALL=1 ;;
    --debug) DEBUG=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "gpu_local.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  ((DRY_RUN)) || "$@"
}

cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
((INSTALL)) && run python3 -m pip install -e . 'jax[cuda12]'
run nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader

ENV=(XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
     "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true ${XLA_FLAGS:-}")
[[ -n $GPUS ]] && ENV+=(CUDA_VISIBLE_DEVICES="$GPUS")
((DEBUG)) && ENV+=(JAX_DEBUG_NANS=1 JAX_TRACEBACK_FILTERING=off)
run env "${ENV[@]}" python3 -m gift.cli train --config="$CONFIG" --workdir="$WORKDIR" \
  --config.distributed.initialize=no "${EXTRA[@]}"
