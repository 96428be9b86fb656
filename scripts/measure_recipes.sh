#!/usr/bin/env bash
# Trains each named config on train[:45000], evaluates its best checkpoint on
# the validation slice train[45000:], and leaves runs/recipe_<model>/ for
# `python -m cifar_jax.report`. Usage, from the repo root:
#   DATA_DIR=../shared/tensorflow_datasets scripts/measure_recipes.sh lenet5 simple_cnn
# Extra flags after `--` go to every run, e.g. `-- --config.num_epochs=10`.
set -euo pipefail
cd "$(dirname "$0")/.."
models=()
while [[ $# -gt 0 && "$1" != "--" ]]; do models+=("$1"); shift; done
[[ $# -gt 0 ]] && shift
data_flag=()
[[ -n "${DATA_DIR:-}" ]] && data_flag=("--config.dataset.data_dir=${DATA_DIR}")
for model in "${models[@]}"; do
  workdir="runs/recipe_${model}"
  python -m cifar_jax.main --config="configs/${model}.py" --workdir="${workdir}" \
    "${data_flag[@]}" "$@"
  python -m cifar_jax.main --config="configs/${model}.py" --workdir="${workdir}" \
    "${data_flag[@]}" "$@" --mode=eval
done
python -m cifar_jax.report --workdirs runs/recipe_* --out runs/recipe_report
