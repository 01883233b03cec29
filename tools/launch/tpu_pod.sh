#!/usr/bin/env bash
# Train on a Cloud TPU pod slice (or NUM_SLICES slices over DCN) from a queued resource, and keep
# training through preemptions until total_steps: the same `dit-jax train --distributed` runs on
# every worker of every slice; on exit code 75 (preempted, checkpoint saved) or a lost slice the
# slice is requested again and the run resumes from WORKDIR.
#
#   QR=dit-xl2 ZONE=us-east5-a ACCELERATOR=v5p-64 WORKDIR=gs://my-bucket/dit-xl2 VAE=gs://my-bucket/sd-vae-ft-ema \
#     DATA_DIR=/data/tfds tools/launch/tpu_pod.sh
#   DRY_RUN=1 QR=... tools/launch/tpu_pod.sh      # print every command, run none
#
# Settings (environment):
#   QR, ZONE, ACCELERATOR, WORKDIR    required; WORKDIR must be a gs:// path all hosts share
#   CONFIG=configs/dit.py:XL/2        TRAIN_FLAGS="--config.batch_size=256 ..." (extra train flags)
#   VAE, DATA_DIR                     --config.data.vae and --config.data.data_dir (the paper's configs need VAE)
#   CHECK=1                           first `dit-jax train --dry_run` here (lib.sh check_here); 0 skips it
#   RUNTIME=v2-alpha-tpuv5            the TPU VM image (v4: tpu-ubuntu2204-base, v5e: v2-alpha-tpuv5-lite,
#                                     v6e: v2-alpha-tpuv6e)
#   SPOT=1                            spot capacity (preemptible); SPOT=0 on-demand or reserved
#   NUM_SLICES=1                      >1: a multi-slice job (the mesh's dcn axes cross the slices)
#   PROJECT=                          gcloud project (default: gcloud's configured one)
#   CACHE_DIR=$WORKDIR/jax_cache      the compilation cache all hosts share (restarts skip compiling)
#   MAX_FAILURES=3                    crashes (exit codes other than 0/2/3/75) retried before giving up
#   SRC=.                             the dit-jax checkout copied to every worker
#   PYTHON=python3                    a Python >= 3.11 on the workers (older images ship 3.10: install
#                                     python3.12 first, or run the Docker image of the Dockerfile)
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/launch/lib.sh

: "${QR:?set QR (queued resource name)}" "${ZONE:?set ZONE}" "${ACCELERATOR:?set ACCELERATOR, e.g. v5p-64}"
: "${WORKDIR:?set WORKDIR=gs://bucket/run}"
CONFIG=${CONFIG:-configs/dit.py:XL/2}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5}
SPOT=${SPOT:-1}
NUM_SLICES=${NUM_SLICES:-1}
MAX_FAILURES=${MAX_FAILURES:-3}
SRC=${SRC:-.}
GCLOUD=(gcloud compute tpus)
[[ -n "${PROJECT:-}" ]] && GCLOUD=(gcloud --project "$PROJECT" compute tpus)

# Every worker: the README's install (Python >= 3.11, dit-jax and jax for TPUs), then the run. The
# exit code is kept on each worker so that the loop here can read it after the ssh session ends.
INSTALL="cd ~/dit-jax && ${PYTHON:-python3} -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e . 'jax[tpu]'"
DATA_FLAGS=$(data_flags)
ARGS="--config=$CONFIG --workdir=$WORKDIR --config.compilation_cache_dir=${CACHE_DIR:-$WORKDIR/jax_cache}${DATA_FLAGS:+ $DATA_FLAGS}${TRAIN_FLAGS:+ $TRAIN_FLAGS}"
# shellcheck disable=SC2086  # ARGS holds several flags
check_here $(( $(tpu_devices "$ACCELERATOR") * NUM_SLICES )) $ARGS
TRAIN="cd ~/dit-jax && .venv/bin/dit-jax train --distributed $ARGS"
TRAIN="$TRAIN; echo \$? > ~/dit_jax_exit_code"

create_slices() {
  local capacity=(); [[ "$SPOT" == 1 ]] && capacity=(--spot)
  local nodes=(--node-id "$QR")
  (( NUM_SLICES > 1 )) && nodes=(--node-count "$NUM_SLICES" --node-prefix "$QR")
  run "${GCLOUD[@]}" queued-resources create "$QR" --zone "$ZONE" --accelerator-type "$ACCELERATOR" \
    --runtime-version "$RUNTIME" "${nodes[@]}" "${capacity[@]}"
  DRY_RUN_STATE=ACTIVE  # what a dry run's next state query answers
}

state() {  # the queued resource's state; NOT_FOUND when gcloud cannot describe it
  local ask=("${GCLOUD[@]}" queued-resources describe "$QR" --zone "$ZONE" --format='value(state.state)')
  if [[ -n "${DRY_RUN:-}" ]]; then  # printed like every other command (gcloud's errors are hidden only for real)
    DRY_ANSWER=${DRY_RUN_STATE:-ACTIVE} query "${ask[@]}"
  else
    "${ask[@]}" 2>/dev/null || echo NOT_FOUND
  fi
}

# One slice: its TPU VM is named after the queued resource. Several: every node of the queued resource.
if (( NUM_SLICES > 1 )); then
  SSH=("${GCLOUD[@]}" queued-resources ssh "$QR" --zone "$ZONE")
  SCP=("${GCLOUD[@]}" queued-resources scp --node=all)
  ALL=(--node=all --worker=all)
else
  SSH=("${GCLOUD[@]}" tpu-vm ssh "$QR" --zone "$ZONE")
  SCP=("${GCLOUD[@]}" tpu-vm scp)
  ALL=(--worker=all)
fi

on_all_workers() {  # one command on every worker of every slice
  run "${SSH[@]}" "${ALL[@]}" --command "$1"
}

ensure_slices() {  # an ACTIVE slice set with dit-jax installed; a preempted one is deleted and requested again
  local s; s=$(state)
  case "$s" in
    ACTIVE) return 0 ;;
    NOT_FOUND) ;;
    *) run "${GCLOUD[@]}" queued-resources delete "$QR" --zone "$ZONE" --force --quiet ;;
  esac
  create_slices
  until [[ "$(state)" == ACTIVE ]]; do sleep 60; done
  run "${SCP[@]}" "$SRC" "$QR:~/dit-jax" --recurse --zone "$ZONE" --worker=all
  on_all_workers "$INSTALL"
}

read_exit_code() {  # sets `code`: the run's exit code on worker 0; an unreachable worker: the slice went away
  local ask=("${SSH[@]}" --worker=0 --command 'cat ~/dit_jax_exit_code')
  if [[ -n "${DRY_RUN:-}" ]]; then
    query "${ask[@]}" >/dev/null
    dry_exit_code
  else
    code=$("${ask[@]}" 2>/dev/null) || code=75
  fi
}

DRY_RUN_STATE=${DRY_RUN_STATE:-NOT_FOUND}  # a dry run starts without a slice: it shows the creation
failures=0
while true; do
  ensure_slices
  on_all_workers "$TRAIN" || true
  read_exit_code
  case "$(next_action "$code")" in
    done) echo "dit-jax: finished (exit 0); results in $WORKDIR"; break ;;
    stop) echo "dit-jax: exit $code (2: bad input, 3: diverged): not retrying; see the log above" >&2; exit "$code" ;;
    resume)
      echo "dit-jax: preempted (exit 75), resuming from the last checkpoint in $WORKDIR"
      DRY_RUN_STATE=SUSPENDED ;;  # a dry run walks through the slice's re-creation
    retry)
      failures=$((failures + 1))
      (( failures > MAX_FAILURES )) && { echo "dit-jax: $failures failures (exit $code), giving up" >&2; exit "$code"; }
      echo "dit-jax: failed (exit $code), retry $failures of $MAX_FAILURES from the last checkpoint" ;;
  esac
done
