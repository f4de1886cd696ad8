#!/usr/bin/env bash
# The quality benchmark with a larger base LM on one GPU (configs/gpu.yaml): the base LM is
# pretrained in the run on the general corpus (no model hub needed), then the whole pipeline
# runs, with LoGra and TRAK at 384, ~3840 and 18432 numbers per example for the frontier.
# Sized for about 15 minutes of one H200 on ShareGPT; not yet run on a GPU.
#
# Usage: benchmarks/gpu_recipe.sh [--toy] [more benchmarks.quality arguments]
#   --toy      the same recipe at a size that runs in minutes on a CPU, to check it end to end
#              where there is no GPU (tests/benchmarks/test_gpu_recipe.py runs it)
# Environment:
#   PYTHON     an interpreter with requirements.lock installed (default: python3)
#   OUT        results folder: quality.json, RESULTS.md, plots (default: benchmarks/results/gpu)
#   DATASETS   comma-separated data sources (default: sharegpt; add natural_instructions
#              for about 7 more minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu}
DATASETS=${DATASETS:-sharegpt}

overrides=()
if [[ ${1:-} == --toy ]]; then
  shift
  overrides=(
    "work_dir=$OUT/work" "base_llm.tiny.corpus=slice" "sampling.pretrain_size=800"
    "base_llm.tiny.vocab_size=2000" "base_llm.tiny.hidden_size=64" "base_llm.tiny.intermediate_size=256"
    "base_llm.tiny.num_layers=1" "base_llm.tiny.num_heads=2" "base_llm.tiny.batch_size=16"
    "sampling.n_splits=3" "sampling.n_dev=30" "sampling.n_pool=120" "sampling.n_subsets=4"
    "sampling.subset_size=40" "sampling.benchmark.n_test=20" "sampling.benchmark.n_pool=60"
    "sampling.benchmark.n_subsets=6" "sampling.benchmark.subset_size=20" "evaluate.noise_ceiling_subsets=4"
    "finetune.max_length=96" "train.steps=3" "train.eval_every=3" "train.reference_size=8" "train.topk=4"
    "train.max_tokens=64" "train.scale_candidates=[5,20]" "evaluate.gradient_max_length=64"
    "evaluate.gradient_proj_dim={logra: 4, tracin: 64, trak: 64}" "evaluate.frontier={logra: [256], trak: [32, 128]}"
  )
fi

# What the run needs, checked before any minute is spent on it.
"$PYTHON" - <<'EOF'
import importlib.util
import sys

needed = ["torch", "transformers", "accelerate", "prefect", "mlflow", "dattri", "pydantic", "pydantic_settings",
          "sklearn", "boto3", "matplotlib", "safetensors", "tokenizers"]
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"gpu_recipe: {sys.executable} lacks {', '.join(missing)}; install them "
             "(pip install -r requirements.lock, or the wheels carried to a machine without an index)")
EOF
if ((${#overrides[@]} == 0)); then
  "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else
    "gpu_recipe: no CUDA device here; run it with --toy to check the recipe on a CPU")'
fi

set_args=()
for item in "${overrides[@]}"; do set_args+=(--set "$item"); done
mkdir -p "$OUT"
export PREFECT_HOME=${PREFECT_HOME:-$OUT/prefect}
exec "$PYTHON" -m benchmarks.quality -c configs/gpu.yaml --datasets "$DATASETS" --out "$OUT" \
  --markdown "$OUT/RESULTS.md" --scaling "" "${set_args[@]}" "$@"
