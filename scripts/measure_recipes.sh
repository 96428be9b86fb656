#!/usr/bin/env bash
# Trains each named config on train[:45000], evaluates its best checkpoint on
# the validation slice train[45000:], and leaves runs/recipe_<model>[_<variant>]/
# for `python -m cifar_jax.report`. A run that was stopped resumes from its
# workdir when the script is started again. Usage, from the repo root:
#   DATA_DIR=../shared/tensorflow_datasets scripts/measure_recipes.sh lenet5 resnet18:budget
# Extra flags after `--` go to every run, e.g. `-- --config.num_epochs=10`.
set -euo pipefail
cd "$(dirname "$0")/.."
models=()
while [[ $# -gt 0 && "$1" != "--" ]]; do models+=("$1"); shift; done
[[ $# -gt 0 ]] && shift
data_flag=()
[[ -n "${DATA_DIR:-}" ]] && data_flag=("--config.dataset.data_dir=${DATA_DIR}")
for spec in "${models[@]}"; do
  model="${spec%%:*}"
  config="configs/${model}.py${spec#"${model}"}"
  workdir="runs/recipe_${spec/:/_}"
  python -m cifar_jax.main --config="${config}" --workdir="${workdir}" \
    "${data_flag[@]}" "$@"
  python -m cifar_jax.main --config="${config}" --workdir="${workdir}" \
    "${data_flag[@]}" "$@" --mode=eval
done
python -m cifar_jax.report --out=runs/recipe_report runs/recipe_*
