#!/usr/bin/env bash
# Train with gift on a Cloud TPU pod slice: create the TPU VM (or a queued resource), put the code
# on every worker, install, run the same `gift train` on all workers detached, watch, tear down.
#
# usage: launch/tpu_pod.sh [options] <step>... [-- <extra gift train args>]
#   steps:  create   create the TPU VM (--queued: a queued resource, waited for until ACTIVE)
#           setup    copy this checkout (git archive HEAD; or --repo URL to clone) to all
#                    workers, install gift with jax[tpu], mount --bucket with gcsfuse if given
#           train    start `gift train --config=CONFIG --workdir=WORKDIR` on --worker=all,
#                    detached (nohup), logging to ~/gift_train.log on each worker
#           logs     follow worker 0's log        status   show the TPU state and gift processes
#           stop     kill gift train on all workers (SIGTERM: each saves a checkpoint first)
#           delete   tear the TPU VM / queued resource down
#           launch   = create setup train
#   options:
#     --name NAME (gift-tpu)  --zone ZONE (us-central2-b)  --project PROJECT (gcloud default)
#     --accelerator TYPE (v4-32)  --version RUNTIME (tpu-ubuntu2204-base)  --queued  --spot
#     --config FILE (configs/paper_62b_tpu.py)  --workdir DIR (/mnt/gift/run; must be shared by
#     all workers, e.g. under the --bucket mount)  --bucket GCS_BUCKET (mounted at /mnt/gift)
#     --repo URL [--branch B]  --dry-run (print every command, run nothing)
# Re-running `train` with the same workdir resumes from the latest checkpoint.
set -euo pipefail

NAME=gift-tpu ZONE=us-central2-b PROJECT="" ACCEL=v4-32 VERSION=tpu-ubuntu2204-base
QUEUED=0 SPOT=0 DRY_RUN=0 CONFIG=configs/paper_62b_tpu.py WORKDIR=/mnt/gift/run BUCKET=""
REPO="" BRANCH=main
STEPS=() EXTRA=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --name) NAME=$2; shift ;;
    --zone) ZONE=$2; shift ;;
    --project) PROJECT=$2; shift ;;
    --accelerator) ACCEL=$2; shift ;;
    --version) VERSION=$2; shift ;;
    --queued) QUEUED=1 ;;
    --spot) SPOT=1 ;;
    --config) CONFIG=$2; shift ;;
    --workdir) WORKDIR=$2; shift ;;
    --bucket) BUCKET=$2; shift ;;
    --repo) REPO=$2; shift ;;
    --branch) BRANCH=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    create|setup|train|logs|status|stop|delete) STEPS+=("$1") ;;
    launch) STEPS+=(create setup train) ;;
    *) echo "tpu_pod.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
((${#STEPS[@]})) || { usage >&2; exit 2; }

# Prints a command, then runs it unless --dry-run.
run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  ((DRY_RUN)) || "$@"
}

GCLOUD=(gcloud compute tpus)
LOC=(--zone="$ZONE")
[[ -n $PROJECT ]] && LOC+=(--project="$PROJECT")
on_all() { run "${GCLOUD[@]}" tpu-vm ssh "$NAME" "${LOC[@]}" --worker=all --command="$1"; }

create() {
  local spot=()
  ((SPOT)) && spot=(--spot)
  if ((QUEUED)); then
    run "${GCLOUD[@]}" queued-resources create "$NAME" --node-id="$NAME" "${LOC[@]}" \
      --accelerator-type="$ACCEL" --runtime-version="$VERSION" "${spot[@]}"
    local state_cmd=("${GCLOUD[@]}" queued-resources describe "$NAME" "${LOC[@]}"
                     --format='value(state.state)')
    if ((DRY_RUN)); then
      printf '+ (every 30 s until ACTIVE)'; printf ' %q' "${state_cmd[@]}"; printf '\n'
      return
    fi
    until [[ $("${state_cmd[@]}") == ACTIVE ]]; do echo "waiting for $NAME to become ACTIVE"; sleep 30; done
  else
    run "${GCLOUD[@]}" tpu-vm create "$NAME" "${LOC[@]}" --accelerator-type="$ACCEL" \
      --version="$VERSION" "${spot[@]}"
  fi
}

setup() {
  if [[ -n $REPO ]]; then
    on_all "rm -rf ~/gift && git clone --depth 1 --branch $(printf %q "$BRANCH") $(printf %q "$REPO") ~/gift"
  else
    local root tarball
    root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
    tarball=${TMPDIR:-/tmp}/gift-src.tar.gz
    run git -C "$root" archive --format=tar.gz --prefix=gift/ -o "$tarball" HEAD
    run "${GCLOUD[@]}" tpu-vm scp "$tarball" "$NAME":gift-src.tar.gz "${LOC[@]}" --worker=all
    on_all "rm -rf ~/gift && tar xzf ~/gift-src.tar.gz -C ~"
  fi
  on_all "cd ~/gift && python3 -m pip install -q -U pip && python3 -m pip install -q -e . 'jax[tpu]'"
  if [[ -n $BUCKET ]]; then
    on_all "sudo mkdir -p /mnt/gift && sudo chown \$USER /mnt/gift && (mountpoint -q /mnt/gift || gcsfuse --implicit-dirs $(printf %q "$BUCKET") /mnt/gift)"
  fi
}

train() {
  local cmd
  cmd=$(printf ' %q' python3 -m gift.cli train --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}")
  on_all "cd ~/gift && nohup${cmd} > ~/gift_train.log 2>&1 < /dev/null & echo started on \$(hostname)"
}

logs() { run "${GCLOUD[@]}" tpu-vm ssh "$NAME" "${LOC[@]}" --worker=0 --command="tail -n 100 -f ~/gift_train.log"; }

status() {
  if ((QUEUED)); then
    run "${GCLOUD[@]}" queued-resources describe "$NAME" "${LOC[@]}"
  else
    run "${GCLOUD[@]}" tpu-vm describe "$NAME" "${LOC[@]}" --format='value(state,health)'
  fi
  on_all "pgrep -af 'gift.cli train' || echo 'no gift train on' \$(hostname)"
}

stop() { on_all "pkill -TERM -f 'gift.cli train' || true"; }

delete() {
  if ((QUEUED)); then
    run "${GCLOUD[@]}" queued-resources delete "$NAME" "${LOC[@]}" --force --quiet
  else
    run "${GCLOUD[@]}" tpu-vm delete "$NAME" "${LOC[@]}" --quiet
  fi
}

for step in "${STEPS[@]}"; do "$step"; done
