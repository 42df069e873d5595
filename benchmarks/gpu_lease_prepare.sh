#!/usr/bin/env bash
# Fills the two folders benchmarks/gpu_lease.sh carries to a GPU machine, which cannot download anything:
#   .whl/      the opacus wheel (the machine's image holds torch, triton and transformers, but not opacus);
#   .devdata/  the dataset files the zoo runs train on, with their checksums.
# Both are git-ignored; a device call names them in carry (about 30 MB). Run from anywhere, where pip can reach
# an index; DPPLAT_DATA names the data folder (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DPPLAT_DATA:-../shared/data}
rm -rf .whl .devdata
mkdir -p .whl .devdata
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl opacus==1.6.0
for file in mnist.npz cifar10_jpeg.npz SHA256SUMS; do cp "$data/$file" .devdata/; done
du -sh .whl .devdata
