#!/usr/bin/env bash
# Trains each named config on train[:45000], evaluates its best checkpoint on
# the validation slice train[45000:] into runs/recipe_<model>[_<variant>]/,
# then keeps the run's records (config, metrics, evaluation: not the
# checkpoints) in ${REPORT_DIR}/records/ and rewrites the report over every run
# kept there (REPORT_DIR: docs/zoo, the README's zoo figures), so a figure
# survives the workdir. A run stopped by Ctrl-C or SIGTERM (exit status 75)
# ends the script before its evaluation; started again, the script resumes it
# from its workdir. Usage, from the repo root:
#   DATA_DIR=../shared/tensorflow_datasets scripts/measure_recipes.sh lenet5 resnet18:budget
# Extra flags after `--` go to every run, e.g. `-- --config.num_epochs=10`.
set -euo pipefail
cd "$(dirname "$0")/.."
models=()
while [[ $# -gt 0 && "$1" != "--" ]]; do models+=("$1"); shift; done
[[ $# -gt 0 ]] && shift
data_flag=()
[[ -n "${DATA_DIR:-}" ]] && data_flag=("--config.dataset.data_dir=${DATA_DIR}")
report_dir="${REPORT_DIR:-docs/zoo}"
for spec in "${models[@]}"; do
  model="${spec%%:*}"
  config="configs/${model}.py${spec#"${model}"}"
  workdir="runs/recipe_${spec/:/_}"
  python -m cifar_jax.main --config="${config}" --workdir="${workdir}" \
    "${data_flag[@]}" "$@"
  python -m cifar_jax.main --config="${config}" --workdir="${workdir}" \
    "${data_flag[@]}" "$@" --mode=eval
  python -m cifar_jax.report --out="${report_dir}" --keep_records="${report_dir}/records" "${workdir}"
done
