#!/usr/bin/env bash
# The DDP-MNIST exercise's recipe, trained in one process, for several seeds (docs/training.md).
# usage: scripts/mnist_recipe.sh [DATA_DIR] [SEEDS...]    (default ../shared/data/mnist, seeds 0 1 2 3 4)
set -euo pipefail
data=${1:-../shared/data/mnist}
shift || true
seeds=${*:-0 1 2 3 4}
export OMP_NUM_THREADS=1
for s in $seeds; do
  python -m mpisim.centralized --dataset mnist --data-dir "$data" --hidden 512,256,128 --activation relu \
    --dropout 0.2 --optimizer adam --lr 1e-3 --weight-decay 1e-5 --schedule step --step-size 3 --gamma 0.5 \
    --batch-size 64 --epochs 5 --seed "$s" --quiet --metrics "${TMPDIR:-/tmp}/mnist_recipe_seed$s.jsonl"
  python - "$s" "${TMPDIR:-/tmp}/mnist_recipe_seed$s.jsonl" <<'PY'
import json, sys
recs = [json.loads(line) for line in open(sys.argv[2])]
print(f"seed {sys.argv[1]}: test accuracy by epoch " + " ".join(f"{100 * r['test_acc']:.2f}" for r in recs)
      + f"   ({sum(r['seconds'] for r in recs):.1f} s)")
PY
done
