#!/usr/bin/env bash
# A GPU check, one command on one H100/H200; it downloads nothing. CHECK picks which:
#   CHECK=gpu-check (the default): issue 19's, about 8 minutes, below;
#   CHECK=chunk-gpu-check: issue 27's, about 9 minutes: the bf16 gradient check (cosine similarity to float32 per
#     parameter tensor), the paper preset at batch 512 with chunk auto (peak GPU memory, clips/s), cudnn.benchmark
#     off and on, steady state at batch 64, 128 and 256, a pretraining run end to end on a corpus of many batches an
#     epoch (made while the GPU measures), batch 512 in chunks under torch.compile, then max-autotune under what is
#     left of the budget (each compiled run in its own process);
#     it rewrites the section "GPU check of issue 27" of docs/benchmarks.md. `--dry-run` runs it at tiny sizes
#     (python -m avss.bench --chunk-gpu-check --dry-run --device cpu works without a GPU).
#
# Issue 19's check:
#
#   1. bf16 equivalence of the two conv forms of the video encoder (paper widths, 4 x 3x16x112x112, channels-last);
#   2. model-only clips/s of the paper preset at batch 128 (bf16 autocast, channels-last, cudnn.benchmark), both conv
#      forms, eager;
#   3. the training loader alone and end to end (the preset's conv form) on a synthetic corpus made and prepared on
#      the spot;
#   4. both forms under torch.compile (default, then end to end compiled, reduce-overhead, then max-autotune, whose
#      compilation alone took over six minutes on an H200) while the time budget lasts.
#
# It prints a table as it goes and rewrites the section "GPU check of issue 19" of docs/benchmarks.md after each
# row; with $OUT set, the log and that file are copied there.
#
# A bare GPU machine may have torch, torchvision, torchaudio, pandas and tqdm but not PyAV, which the data path needs
# (decord too where it has wheels, x86_64; elsewhere avss reads with PyAV alone). Fetch their wheels beside the repository first (.whl/ is ignored by git) and carry `.whl` with the run:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux2010_x86_64 -d .whl av==18.1.0 decord==0.6.0
# Without them the data-path rows are skipped. BUDGET_S (default 420; 500 for chunk-gpu-check) bounds what starts;
# extra arguments go to `python -m avss.bench --$CHECK` (e.g. --steps 50, --workers 15).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
CHECK=${CHECK:-gpu-check}
[ "$CHECK" = chunk-gpu-check ] && budget=${BUDGET_S:-500} || budget=${BUDGET_S:-420}
pipeline=--pipeline
python3 -c 'import av' 2>/dev/null || { echo 'PyAV is missing: the data-path rows are skipped'; pipeline=--no-pipeline; }
python3 -c 'import avss.decode as d; print("source files read by", d.SOURCE_READER.__name__)'
[ "$CHECK" = chunk-gpu-check ] && pipeline=     # it skips its end-to-end run on its own without them
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
workers=$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))
timeout $(( budget + 60 )) python3 -m avss.bench --"$CHECK" --budget-s "$budget" --workers "$workers" \
  $pipeline "$@" 2>&1 | tee ${OUT:+"$OUT/gpu_check.log"}
rc=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then cp docs/benchmarks.md "$OUT/benchmarks.md"; fi
exit "$rc"
