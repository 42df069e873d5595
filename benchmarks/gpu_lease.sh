#!/usr/bin/env bash
# One lease of a lent GPU machine (about 8 minutes): the CUDA correctness checks, the zoo's GPU rows
# and the engine table on the GPU, in that order of importance. Run from the repository root there:
#
#   bash benchmarks/gpu_lease.sh        (carry .whl and .devdata; OUT is where results go)
#
# The machine's image has torch, triton and transformers but not opacus, and it cannot download:
# `bash benchmarks/gpu_lease_prepare.sh`, run here first, fills .whl/ with the opacus wheel and .devdata/ with
# the dataset files it trains on (mnist.npz, cifar10_jpeg.npz, SHA256SUMS). Results under $OUT: log.txt (this script's
# output), tests.txt, engine.md and zoo.tar.gz (a SQLite run store and a log per training run;
# each store holds the per-epoch test accuracy even for a run stopped at its time limit).
#
# PART=lm runs only the language-model table instead (under 10 minutes): GPT-2 small's shape (124M, sequence 1024)
# in bf16, whole and with LoRA, non-private against dpplat per-layer and Opacus's ghost clipping, with tokens a
# second, with the image's transformers.
set -u
OUT=${OUT:-/tmp/gpu-lease}
PART=${PART:-all}
LM_LIMIT=${LM_LIMIT:-480}
ZOO_LIMIT=${ZOO_LIMIT:-320}     # seconds each training run may take
TEST_LIMIT=${TEST_LIMIT:-240}
DEVICE=${DEVICE:-cuda}          # cpu only to try this script out on a machine without a GPU
BENCH_LIMIT=${BENCH_LIMIT:-110}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD DPPLAT_DATA=$PWD/.devdata PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, opacus, os; print('torch', torch.__version__, '| opacus', opacus.__version__, '|', torch.cuda.is_available() and torch.cuda.get_device_name(), '|', os.cpu_count(), 'cores')"
if [ "$PART" = lm ]; then
  say "language-model table: GPT-2 small's shape, bf16"
  timeout -s INT -k 15 "$LM_LIMIT" python3 benchmarks/engine.py --device "$DEVICE" --dtype bf16 --rounds 3 \
    --models gpt2-small-lora,gpt2-small --methods "non-private" "dpplat per-layer" "opacus ghost" > "$OUT/engine-lm.md" 2>&1
  say "engine exit $?"
  grep -v Warning "$OUT/engine-lm.md"
  exit 0
fi
say "decoding CIFAR-10 once (cached for the runs)"
python3 -c "from dpplat.data import load_arrays; load_arrays('cifar10-jpeg')" || say "CIFAR-10 decode failed"

runs=/tmp/zoo; mkdir -p "$runs"
train() {  # NAME, then dpplat train flags; 2 CPU threads each, so that seven runs and the tests share 16 cores
  local name=$1; shift
  mkdir -p "$runs/$name"  # a folder each: a store keeps its checkpoints beside it, by run id
  OMP_NUM_THREADS=2 timeout -s INT -k 15 "$ZOO_LIMIT" python3 -m dpplat.cli train --device "$DEVICE" --quiet --name "$name" \
    --store "$runs/$name/store.db" "$@" > "$runs/$name/log.txt" 2>&1
  echo "exit $? after $(( $(date +%s) - start ))s of the lease" >> "$runs/$name/log.txt"
}
say "zoo runs start"
mnist=(--dataset mnist --epsilon 1 --epochs 30 --batch-size 2048 --optimizer adam --lr 0.005 --max-grad-norm 1)
pids=()  # waited for by id: a bare 'wait' would also wait for the tee behind exec, which never ends
for model in cnn c4-cnn d4-cnn c8-cnn d8-cnn; do train "mnist-$model-eps1-e30" --model "$model" "${mnist[@]}" & pids+=($!); done
cifar=(--dataset cifar10-jpeg --epsilon 8 --epochs 12 --batch-size 4096 --optimizer adam --lr 0.003 --max-grad-norm 1 --ema-decay 0.97)
for model in cnn d4-resnet9; do train "cifar10-$model-eps8-e12" --model "$model" "${cifar[@]}" & pids+=($!); done

say "CUDA checks: the per-sample rule tests with the engine on the GPU against the CPU float64 loop"
TESTS=${TESTS:-tests/engine/test_rules.py tests/models/test_equivariant.py tests/models/test_scattering.py tests/test_devices.py}
DPPLAT_TEST_DEVICE=$DEVICE OMP_NUM_THREADS=3 timeout -s INT -k 15 "$TEST_LIMIT" python3 -m pytest -q -p no:cacheprovider \
  $TESTS > "$OUT/tests.txt" 2>&1
say "tests exit $?: $(tail -1 "$OUT/tests.txt")"
wait "${pids[@]}"
say "zoo runs done"
for log in "$runs"/*/log.txt; do echo "$(basename "$(dirname "$log")"): $(tail -2 "$log" | tr '\n' ' ')"; done
tar -czf "$OUT/zoo.tar.gz" --exclude='*.pt' -C "$runs" .

[ "$BENCH_LIMIT" -gt 0 ] || { say "done (no engine table: BENCH_LIMIT=0)"; exit 0; }
say "engine table on the GPU"
timeout -s INT -k 15 "$BENCH_LIMIT" python3 benchmarks/engine.py --device "$DEVICE" --rounds 5 > "$OUT/engine.md" 2>&1
say "engine exit $?"
cat "$OUT/engine.md" | grep -v Warning
say "done"
