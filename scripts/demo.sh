#!/usr/bin/env bash
# The demo from the README: sets up .venv if needed, trains a CNN on MNIST under (epsilon=2, delta=1e-5),
# prints test accuracy, epsilon spent and the privacy statement, and stores the run in ./dpplat.db.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
STORE=${DPPLAT_STORE:-dpplat.db}
.venv/bin/dpplat train --dataset mnist --model cnn --epsilon 2 --delta 1e-5 --epochs 5 \
  --batch-size 512 --max-grad-norm 0.1 --lr 4 --store "$STORE" "$@"
