#!/usr/bin/env sh
# Writes a deterministic random .safetensors checkpoint (f32, Hugging Face tensor names) for a
# small model config, for functional `trainyard llm` runs:
#
#   scripts/make-tiny-checkpoint.sh [CONFIG] [SEED] [OUTPUT]
#
# CONFIG defaults to models/tiny-llama/config.json, SEED to 0, OUTPUT to
# tiny-llama.safetensors. Then:
#
#   trainyard llm --config models/tiny-llama/config.json --checkpoint tiny-llama.safetensors \
#       --prompt 1,2,3,4 --generate 8
#
# Uses target/release/trainyard if it exists, else builds it with cargo.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
config=${1:-$root/models/tiny-llama/config.json}
seed=${2:-0}
output=${3:-tiny-llama.safetensors}

bin=${TRAINYARD:-$root/target/release/trainyard}
if [ ! -x "$bin" ]; then
    (cd "$root" && cargo build --release -p trainyard-cli)
fi
"$bin" llm init-checkpoint --config "$config" --seed "$seed" -o "$output"
