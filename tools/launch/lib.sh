# Shared by the launch recipes: dry runs and the exit-code policy of `dit-jax train`.
#
# DRY_RUN=1 prints each command (shell-quoted, one per line, prefixed "+ ") instead of running it.
# Queries that a real run would ask the cloud answer as follows in a dry run: the state of a
# resource is DRY_RUN_STATE (default ACTIVE), and `dit-jax train` exits with the next code of
# DRY_RUN_EXIT_CODES (default "0"), so that a dry run can walk through a preemption: "75 0".

run() {  # run a command, or print it in a dry run
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

query() {  # run a command that reports something (its stdout), or print it and answer $DRY_ANSWER
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '+' >&2; printf ' %q' "$@" >&2; printf '\n' >&2
    echo "${DRY_ANSWER:-}"
  else
    "$@"
  fi
}

_dry_codes=(${DRY_RUN_EXIT_CODES:-0})
dry_exit_code() {  # sets `code` to the exit code a dry run pretends `dit-jax train` returned, in turn
  code=${_dry_codes[0]:-0}
  _dry_codes=("${_dry_codes[@]:1}")
}

# What `dit-jax train`'s exit code asks of a retry loop (dit_jax/train/exit_codes.py):
#   0 done, 75 preempted with a checkpoint saved (resume), 2 bad input and 3 diverged (stop: a
#   rerun fails the same way), anything else a crash (retry a few times: the last checkpoint holds).
next_action() {
  case "$1" in
    0) echo done ;;
    75) echo resume ;;
    2|3) echo stop ;;
    *) echo retry ;;
  esac
}

# The data flags of a run from the recipes' settings: VAE (a `dit-jax convert --from-diffusers-vae`
# output that every host reads, e.g. gs://bucket/sd-vae-ft-ema) and DATA_DIR (the TFDS directory
# on every host, e.g. /data/tfds). The paper's configs encode with the VAE, so they need VAE.
data_flags() {
  local flags=()
  [[ -n "${VAE:-}" ]] && flags+=("--config.data.vae=$VAE")
  [[ -n "${DATA_DIR:-}" ]] && flags+=("--config.data.data_dir=$DATA_DIR")
  echo "${flags[*]:-}"
}

tpu_devices() {  # tpu_devices TYPE: the JAX devices of one slice (v4 and v5p types count TensorCores, two per device)
  local kind=${1%-*} n=${1##*-}
  case "$kind" in
    v4|v5p) echo $((n / 2)) ;;
    *) echo "$n" ;;   # v2/v3 (one device per TensorCore), v5e (v5litepod) and v6e (per chip)
  esac
}

# Before anything is asked of the cloud or the cluster: `dit-jax train --dry_run` of the run's own
# flags on this machine, for the slice's device count (config fields, mesh, batch; not the files,
# which the hosts hold), so that a bad config fails here in seconds rather than on a slice that was
# queued and set up for it. DIT_JAX names the local dit-jax (default .venv/bin/dit-jax, else the
# one on PATH); CHECK=0 skips the check. It runs in a dry run of the recipe too: it writes nothing.
check_here() {  # check_here DEVICES TRAIN_ARGS...
  [[ "${CHECK:-1}" == 0 ]] && return 0
  local exe=${DIT_JAX:-}
  if [[ -z "$exe" ]]; then
    if [[ -x .venv/bin/dit-jax ]]; then exe=.venv/bin/dit-jax
    elif command -v dit-jax >/dev/null; then exe=dit-jax
    else echo "error: no dit-jax here for the check before launch: install it (README set-up), set DIT_JAX, or CHECK=0" >&2
      exit 2
    fi
  fi
  echo "checking the run here: $exe train --dry_run --nocheck_files --devices=$1 ${*:2}" >&2
  "$exe" train --dry_run --nocheck_files "--devices=$1" "${@:2}" >&2 || {
    echo "error: the run's check failed (above): fix its flags before launching (nothing was launched)" >&2
    exit 2
  }
}
