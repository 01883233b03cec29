#!/usr/bin/env bash
# Train on TPU slices of a GKE cluster with XPK: build the image of the Dockerfile, push it,
# and create a JobSet workload that runs `dit-jax train --distributed` on every host of every slice.
#
#   CLUSTER=my-gke PROJECT=my-proj ZONE=us-east5-a TPU_TYPE=v5p-256 WORKDIR=gs://bucket/dit-xl2 \
#     VAE=gs://bucket/sd-vae-ft-ema DATA_DIR=/data/tfds IMAGE=us-docker.pkg.dev/my-proj/dit/dit-jax:latest \
#     tools/launch/xpk.sh
#   DRY_RUN=1 ... tools/launch/xpk.sh          # print every command, run none
#
# Restarts: JobSet restarts the whole workload when a pod fails, up to MAX_RESTARTS times; every
# restart resumes from the last checkpoint in WORKDIR. Exit 75 (preempted, saved) and crashes are
# failures to JobSet and so restart; 0 ends the workload. 2 (bad input) and 3 (diverged) restart
# too (XPK has no per-exit-code policy), and fail again within seconds of starting each time.
# Settings: CACHE_DIR=$WORKDIR/jax_cache (compilation cache all hosts share), NUM_SLICES=1, CONFIG=configs/dit.py:XL/2, TRAIN_FLAGS, WORKLOAD=dit-jax, MAX_RESTARTS=10,
# VAE and DATA_DIR (--config.data.vae / data_dir; the paper's configs need VAE), CHECK=1 (a `dit-jax train
# --dry_run` here before the image is built; 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/launch/lib.sh

: "${CLUSTER:?}" "${PROJECT:?}" "${ZONE:?}" "${TPU_TYPE:?e.g. v5p-256}" "${WORKDIR:?gs://...}" "${IMAGE:?}"
CONFIG=${CONFIG:-configs/dit.py:XL/2}
WORKLOAD=${WORKLOAD:-dit-jax}

DATA_FLAGS=$(data_flags)
ARGS="--config=$CONFIG --workdir=$WORKDIR --config.compilation_cache_dir=${CACHE_DIR:-$WORKDIR/jax_cache}${DATA_FLAGS:+ $DATA_FLAGS}${TRAIN_FLAGS:+ $TRAIN_FLAGS}"
# shellcheck disable=SC2086  # ARGS holds several flags
check_here $(( $(tpu_devices "$TPU_TYPE") * ${NUM_SLICES:-1} )) $ARGS

run docker build --build-arg JAX_EXTRA=tpu -t "$IMAGE" .
run docker push "$IMAGE"
run xpk workload create --cluster "$CLUSTER" --project "$PROJECT" --zone "$ZONE" --workload "$WORKLOAD" \
  --tpu-type "$TPU_TYPE" --num-slices "${NUM_SLICES:-1}" --docker-image "$IMAGE" \
  --max-restarts "${MAX_RESTARTS:-10}" \
  --command "dit-jax train --distributed $ARGS"
echo "follow it with: xpk workload list --cluster $CLUSTER --project $PROJECT --zone $ZONE"
