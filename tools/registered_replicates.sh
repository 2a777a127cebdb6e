#!/usr/bin/env bash
# The pre-registered replicates (results/PREREGISTRATION.md), both datasets, alternating seed by seed so that
# both advance together; then the split/training decomposition and the precision check. Every sweep folder
# resumes: a finished seed is skipped, so rerun this script in each sitting until it prints "all done".
#
#   bash tools/registered_replicates.sh SWEEPS_DIR [DATA_ROOT]      # DATA_ROOT default ../shared/data
#
# Run it from a clean checkout (git worktree) of one commit after the registration, with its own .venv
# (`make venv`), so that editing the working copy cannot change a replicate half-way; the commit is in every
# run's manifest. The first sitting (2026-12-05) ran at d2f6e35.
set -euo pipefail
SWEEPS=${1:?usage: bash tools/registered_replicates.sh SWEEPS_DIR [DATA_ROOT]}
DATA=${2:-../shared/data}
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=.venv/bin/python
# ARM_SCHEDULE=in_turn, LR=0.0003 and LR_SCHEDULE=constant: the protocol and recipe the registered replicates ran
# with (the laptop profile now trains the arms side by side, at the learning rate the recipe screening chose)
sweep() { "$PY" -m improve_lib sweep --profile laptop --no-progress --no-compare --set ARM_SCHEDULE=in_turn \
  --set LR=0.0003 --set LR_SCHEDULE=constant "$@"; }
seeds=""
for s in 3 4 5 6 7 8 9 10; do
  seeds="${seeds:+$seeds,}$s"
  for ds in ham10000 bone_marrow; do
    echo "=== $(date -u +%FT%TZ) $ds seeds $seeds"
    sweep --dataset "$ds" --data-dir "$DATA/$ds" --seeds "$seeds" --sweep-dir "$SWEEPS/prereg-$ds"
  done
done
for ds in ham10000 bone_marrow; do
  for sp in 3 4; do  # the same split as replicates 3 and 4, a second training seed
    echo "=== $(date -u +%FT%TZ) $ds split $sp training seed 100$sp"
    sweep --dataset "$ds" --data-dir "$DATA/$ds" --seeds "100$sp" --set SPLIT_SEED=$sp --sweep-dir "$SWEEPS/prereg-$ds-split$sp"
  done
  # the precision check: the replicates above trained in bf16 where the CPU has bf16 units (AMX); where they ran in
  # fp32 (AVX2 only), run this block on a CPU with bf16 units and MIXED_PRECISION=bf16 instead
  echo "=== $(date -u +%FT%TZ) $ds fp32 seeds 3,4 (the precision check)"
  # 'no' quoted: before a5bd9b8 (YAML 1.2 booleans, improve_lib.core.values.read_user_yaml), e.g. at d2f6e35,
  # an unquoted no arrived as False and the sweep refused it
  sweep --dataset "$ds" --data-dir "$DATA/$ds" --seeds 3,4 --set "MIXED_PRECISION='no'" --sweep-dir "$SWEEPS/prereg-$ds-fp32"
done
echo "=== $(date -u +%FT%TZ) all done"
# Then, per dataset, condense into results/<dataset>/ with the check runs beside the replicates (SUMMARY.md reads
# them for the registered split/training variance and the precision check):
#   python -m improve_lib compare SWEEPS/prereg-DS
#   python -m improve_lib results SWEEPS/prereg-DS results/DS --command "..." \
#       --check SWEEPS/prereg-DS-split3 --check SWEEPS/prereg-DS-split4 --check SWEEPS/prereg-DS-fp32
#   python tools/probe_replicates.py SWEEPS/prereg-DS results/DS/probe.csv   # then results_folder.write_summary
