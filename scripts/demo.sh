#!/usr/bin/env bash
# The demo from the README: sets up .venv if needed, trains a CNN on MNIST under (epsilon=2, delta=1e-5),
# audits it with membership inference (claimed vs empirical epsilon), stores both in ./dpplat.db and prints
# the command that opens the dashboard (pass --serve to open it right away).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
exec .venv/bin/dpplat demo "$@"
