#!/usr/bin/env bash
# Reproduce the allreduce tables in docs/collectives.md: mpisim.bench at 2 and 4 ranks.
# Usage: scripts/bench_allreduce.sh [OUTDIR] [extra mpisim.bench options...]
# Writes OUTDIR/allreduce-2ranks.{txt,csv} and -4ranks (default OUTDIR: results/).
set -euo pipefail
out="${1:-results}"
shift || true
mkdir -p "$out"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
for n in 2 4; do
  echo "== mpiexec -n $n python -m mpisim.bench $* ==" >&2
  mpiexec -n "$n" python -m mpisim.bench --csv "$out/allreduce-${n}ranks.csv" "$@" | tee "$out/allreduce-${n}ranks.txt"
done
