#!/usr/bin/env bash
# DiT-XL/2 speed on one accelerator machine that reaches no package registry, as one call that fits its budget.
#
#   tools/device_benchmark.sh --prepare   here: the wheels that machine lacks into .whl/ (git-ignored), pinned to
#                                         this environment's versions; the size check (tree + wheels < 64 MiB);
#                                         the call to make
#   tools/device_benchmark.sh             there: install .whl/ into /tmp/site, check the environment, run the
#                                         groups below; results under $OUT
#   tools/device_benchmark.sh --dry-run   CPU: the same groups on a tiny model, no wheels, into $OUT (default: a
#                                         temporary directory); tests/test_device_benchmark.py runs it
#
# Each group is its own process under its own wall-time budget (`timeout`), in order of priority:
#   train-b32         XL/2 at 256 px, bf16, cuDNN attention, batch 32: the step alone, fed by Grain, the input alone
#   torch-train       the PyTorch reference's train step at batch 32 in TF32 and bf16 autocast
#   sample-ddpm       the sampler: 250 DDPM steps, guidance 1.5, 32 images
#   torch-sample      the reference's sample.py loop: 250 steps, TF32 and bf16
#   meanflow-b32      MF-XL/2 (configs/meanflow.py, XLA attention: the JVP) step at batch 32, and 1-NFE sampling
#   train-b256-remat  batch 256 with remat=full
#   torch-compile     the reference's train step in bf16 + torch.compile
#   sample-fast       25 steps of the fast solver, if dit_jax's sampler registry lists one
# After each group, $OUT/bench.json and $OUT/bench.md are rewritten whole (tools/bench_table.py), so a group
# that overruns its budget, or the call's own limit, costs only the groups not yet done; $OUT/log.txt has all
# output. That is 3 files: the device tool returns at most 8.
# The run stays under BENCH_TOTAL_S (default 450 s, install included): a group gets min(its budget, the time
# left), and is skipped when under BENCH_MIN_GROUP_S (20 s) is left.
# BENCH_BUDGET_<group, with _ for ->=SECONDS overrides a budget; BENCH_GROUPS=a,b runs only those groups.
# JAX's persistent compilation cache (a fresh directory per run) lets a sampler group, which builds and runs a
# train step before its sampler (dit-jax benchmark has no sampler-only mode), load the batch-32 step that
# train-b32 compiled instead of compiling it again; those train rows are kept in bench.json, not shown.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
MODE=run
case "${1:-}" in
    --prepare) MODE=prepare ;;
    --dry-run) MODE=dry-run ;;
    "") ;;
    *) echo "error: unknown argument '$1': use --prepare (here), --dry-run (CPU) or nothing (on the device)" >&2
       exit 2 ;;
esac

if [[ $MODE == prepare ]]; then
    PY=${PYTHON:-python}
    "$PY" tools/device_env.py wheels .whl || exit 1
    if ! git check-ignore -q .whl/x.whl; then
        echo "error: .whl/ is not git-ignored: add it to .gitignore" >&2
        exit 1
    fi
    echo
    echo "The call to make (device tool, run), about 8 minutes of device time plus the machine's start:"
    echo "  command: bash tools/device_benchmark.sh"
    echo "  carry:   [\".whl\"]"
    echo "  timeout_s: 500"
    echo "Results: bench.md (the table), bench.json (every group's rows and status), log.txt."
    exit 0
fi

export PYTHONUNBUFFERED=1
if [[ $MODE == dry-run ]]; then
    OUT=${OUT:-$(mktemp -d /tmp/devbench-out.XXXXXX)}
    PY=${PYTHON:-python}
    export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
    EXPECT=""
    TOTAL=${BENCH_TOTAL_S:-900}
    # S/2 cut down to one block of width 32 on 8x8 latents, float32: the groups' code paths in seconds.
    MODEL=(--config configs/dit.py:XL/2 --config.data.latents=dataset --model S/2 --input-size 8 --depth 1
           --hidden-size 32 --num-heads 2 --num-classes 10 --dtype float32)
    B=2; B_BIG=4; SAMPLE_STEPS=3; FAST_STEPS=2; SAMPLE_BATCH=2
    TRAIN_STEPS=(--steps 2 --warmup 1); BIG_STEPS=(--steps 2 --warmup 1)
    MF_MODEL=(--config configs/meanflow.py:XL/2 --config.data.latents=dataset --input-size 8 --depth 1
              --hidden-size 32 --num-heads 2 --num-classes 10 --dtype float32)
    declare -A BUDGET=([train-b32]=300 [torch-train]=300 [sample-ddpm]=300 [torch-sample]=300
                       [train-b256-remat]=300 [torch-compile]=300 [sample-fast]=300 [meanflow-b32]=300 [train-repa-b32]=300)
else
    if [[ -z "${OUT:-}" ]]; then
        echo "error: OUT is not set: on the device machine the tool sets it; elsewhere run --dry-run" >&2
        exit 2
    fi
    PY=${PYTHON:-python3}
    EXPECT=gpu
    TOTAL=${BENCH_TOTAL_S:-450}
    MODEL=(--config configs/dit.py:XL/2 --config.data.latents=dataset)
    MF_MODEL=(--config configs/meanflow.py:XL/2 --config.data.latents=dataset)
    B=32; B_BIG=256; SAMPLE_STEPS=250; FAST_STEPS=25; SAMPLE_BATCH=32
    TRAIN_STEPS=(--steps 20 --warmup 3); BIG_STEPS=(--steps 10 --warmup 2)
    # Seconds; guesses until a device run has timed the groups (bench.md lists what each took).
    declare -A BUDGET=([train-b32]=90 [torch-train]=50 [sample-ddpm]=80 [torch-sample]=60
                       [train-b256-remat]=80 [torch-compile]=100 [sample-fast]=45 [meanflow-b32]=100 [train-repa-b32]=90)
fi
WORK=$(mktemp -d /tmp/devbench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
MIN_GROUP=${BENCH_MIN_GROUP_S:-20}
RESERVE=15  # for the records still to write (a Python start each) and the last summary
mkdir -p "$OUT"
: > "$OUT/log.txt"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export JAX_COMPILATION_CACHE_DIR="$WORK/jax-cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
       JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0

if [[ $MODE == run ]]; then
    SITE=${BENCH_SITE:-/tmp/site}  # where the carried wheels go (the machine's own packages stay as they are)
    if compgen -G ".whl/*.whl" > /dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            .whl/*.whl 2>&1 | tee -a "$OUT/log.txt"
        [[ ${PIPESTATUS[0]} == 0 ]] || { echo "error: installing .whl/ into $SITE failed (above)" >&2; exit 1; }
        export PYTHONPATH="$PYTHONPATH:$SITE"
    else
        echo "warning: no .whl/ here: run tools/device_benchmark.sh --prepare and carry .whl" | tee -a "$OUT/log.txt"
    fi
fi

echo "=== environment" | tee -a "$OUT/log.txt"
"$PY" tools/device_env.py check "$WORK/env.json" --expect "$EXPECT" 2>&1 | tee -a "$OUT/log.txt"
CHECK=${PIPESTATUS[0]}
"$PY" tools/bench_table.py init --out "$OUT" --env "$WORK/env.json" \
    --title "dit-jax speed: ${MODEL[*]}" || exit 1
if [[ $CHECK != 0 ]]; then
    echo "error: the environment cannot run the benchmark (the 'missing:' lines above; also in $OUT/bench.md)" >&2
    exit 1
fi
FAST=$(sed -n 's/.*"fast_solver": "\([^"]*\)".*/\1/p' "$WORK/env.json")

FAILED=0
record() {  # NAME STATUS [record flags...]
    local name=$1 status=$2
    shift 2
    "$PY" tools/bench_table.py record --out "$OUT" --group "$name" --status "$status" "$@" ||
        echo "warning: could not record group $name" >&2
}

group() {  # NAME KEEP-KINDS CMD... (CMD writes $WORK/NAME.json)
    local name=$1 keep=$2
    shift 2
    local var="BENCH_BUDGET_${name//-/_}"
    local budget=${!var:-${BUDGET[$name]}}
    if [[ -n "${BENCH_GROUPS:-}" && ",$BENCH_GROUPS," != *",$name,"* ]]; then
        return
    fi
    local left=$(( TOTAL - SECONDS - RESERVE ))
    local limit=$(( budget < left ? budget : left ))
    if (( limit < MIN_GROUP && limit < budget )); then
        record "$name" skipped --budget "$budget" --reason "${left} s left of the run's ${TOTAL} s" --command "$*"
        return
    fi
    echo "=== $name (budget ${limit} s): $*" | tee -a "$OUT/log.txt"
    local t0=$SECONDS
    # timeout signals the command's whole process group (the reference's child too); -k: KILL 5 s later.
    timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt" "$WORK/$name.log"
    local rc=${PIPESTATUS[0]} status=ok reason=""
    if [[ $rc == 124 || $rc == 137 ]]; then
        status=timeout reason="over its ${limit} s budget"
    elif [[ $rc != 0 ]]; then
        status=failed reason="exit $rc"
    fi
    [[ $status == ok ]] || FAILED=1
    echo "=== $name: $status after $(( SECONDS - t0 )) s" | tee -a "$OUT/log.txt"
    record "$name" "$status" --reason "$reason" --seconds $(( SECONDS - t0 )) --budget "$limit" --rc "$rc" \
        --keep "$keep" --report "$WORK/$name.json" --log "$WORK/$name.log" --command "$*"
}

BENCH=("$PY" -m dit_jax.cli benchmark "${MODEL[@]}")
TORCH=("$PY" tools/bench_torch.py "${MODEL[@]}")
# The train step a sampler group must run first: train-b32's (a cache hit), one step, no pipeline; not shown.
SAMPLER_TRAIN=(--setting "batch=$B" --steps 1 --warmup 0 --no-pipeline)

group train-b32 train,save,input "${BENCH[@]}" --setting "batch=$B" "${TRAIN_STEPS[@]}" --sample-steps 0 \
    --out "$WORK/train-b32.json"
group torch-train "" "${TORCH[@]}" --setting "batch=$B" "${TRAIN_STEPS[@]}" --train-modes tf32,bf16 \
    --out "$WORK/torch-train.json"
group sample-ddpm sample "${BENCH[@]}" "${SAMPLER_TRAIN[@]}" --sample-steps "$SAMPLE_STEPS" --sampler ddpm \
    --cfg-scale 1.5 --sample-batch "$SAMPLE_BATCH" --out "$WORK/sample-ddpm.json"
group torch-sample "" "${TORCH[@]}" --sample-modes tf32,bf16 --sample-steps "$SAMPLE_STEPS" --cfg-scale 1.5 \
    --sample-batch "$SAMPLE_BATCH" --out "$WORK/torch-sample.json"
# MeanFlow: its own step (two guidance forwards, the JVP, the backward through both) and its 1-NFE sampler.
group meanflow-b32 train,sample "$PY" -m dit_jax.cli benchmark "${MF_MODEL[@]}" --setting "batch=$B" "${TRAIN_STEPS[@]}" \
    --no-pipeline --sample-steps 1 --sampler meanflow --cfg-scale 1.0 --sample-batch "$SAMPLE_BATCH" \
    --out "$WORK/meanflow-b32.json"
group train-b256-remat train,save "${BENCH[@]}" --setting "batch=$B_BIG,remat=full" "${BIG_STEPS[@]}" \
    --no-pipeline --sample-steps 0 --out "$WORK/train-b256-remat.json"
if [[ $MODE == dry-run ]]; then
    record torch-compile skipped --reason "dry run: no compile rows"
else
    group torch-compile "" "${TORCH[@]}" --setting "batch=$B" "${TRAIN_STEPS[@]}" --train-modes bf16+compile \
        --out "$WORK/torch-compile.json"
fi
if [[ -n "$FAST" ]]; then
    group sample-fast sample "${BENCH[@]}" "${SAMPLER_TRAIN[@]}" --sample-steps "$FAST_STEPS" --sampler "$FAST" \
        --cfg-scale 1.5 --sample-batch "$SAMPLE_BATCH" --out "$WORK/sample-fast.json"
else
    record sample-fast skipped --reason "no fast solver in dit_jax.diffusion.ancestral.SAMPLERS"
fi

# SiT-XL/2 + REPA (DINOv2-B, random weights: the cost does not depend on them) beside train-b32's plain step.
if [[ $MODE == dry-run ]]; then
    record train-repa-b32 skipped --reason "dry run: DINOv2 reads 256 px images, which the tiny model's data lacks"
else
    group train-repa-b32 train "$PY" -m dit_jax.cli benchmark --config configs/repa.py:XL/2 --setting "batch=$B" \
        "${TRAIN_STEPS[@]}" --no-pipeline --sample-steps 0 --out "$WORK/train-repa-b32.json"
fi

echo "=== done in $SECONDS s; $OUT: bench.md, bench.json, log.txt" | tee -a "$OUT/log.txt"
cat "$OUT/bench.md"
exit $(( FAILED ? 3 : 0 ))
