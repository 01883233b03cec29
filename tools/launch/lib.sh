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
