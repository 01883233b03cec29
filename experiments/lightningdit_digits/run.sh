#!/usr/bin/env bash
# The LightningDiT options on the digits demo (configs/demo.py unchanged otherwise: 4,000 steps, batch 32,
# lr 1e-3 with 100 warm-up steps, EMA 0.999, the digits evaluation at 2,000 and 4,000 steps).
# Usage: experiments/lightningdit_digits/run.sh OUT [RUN ...]   (default: every run below, one after another)
# Then: python experiments/lightningdit_digits/table.py OUT > experiments/lightningdit_digits/table.md
# NICE (default 10): the niceness of each run; EXTRA: more `dit-jax train` arguments for every run
# (e.g. EXTRA=--config.keep_checkpoints=10 keeps every checkpoint; it changes nothing else).
set -euo pipefail
out=${1:?usage: run.sh OUT [RUN ...]}; shift || true
mkdir -p "$out"
M=--config.model
declare -A RUNS=(
  [ddpm]=""
  [ddpm_qknorm]="$M.use_qknorm=True"
  [ddpm_rmsnorm]="$M.use_rmsnorm=True"
  [ddpm_swiglu]="$M.use_swiglu=True"
  [ddpm_rope]="$M.use_rope=True"
  [ddpm_wo_shift]="$M.wo_shift=True"
  [ddpm_all]="$M.use_qknorm=True $M.use_rmsnorm=True $M.use_swiglu=True $M.use_rope=True $M.wo_shift=True"
  [sit]="--config.objective=sit"
  [sit_lognorm]="--config.objective=sit --config.transport.use_lognorm=True"
  [sit_cosine]="--config.objective=sit --config.transport.use_cosine_loss=True"
  [sit_all]="--config.objective=sit --config.transport.use_lognorm=True --config.transport.use_cosine_loss=True $M.use_qknorm=True $M.use_rmsnorm=True $M.use_swiglu=True $M.use_rope=True $M.wo_shift=True"
)
names=("$@"); [ ${#names[@]} -eq 0 ] && names=(ddpm ddpm_qknorm ddpm_rmsnorm ddpm_swiglu ddpm_rope ddpm_wo_shift ddpm_all sit sit_lognorm sit_cosine sit_all)
for name in "${names[@]}"; do
  # shellcheck disable=SC2086
  nice -n "${NICE:-10}" dit-jax train --workdir "$out/$name" ${RUNS[$name]} ${EXTRA:-} > "$out/$name.log" 2>&1
done
