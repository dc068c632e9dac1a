#!/usr/bin/env bash
# Rebuild the shipped highway-env world model (gaia_gym/assets/world_model_highway) from nothing:
# stage 1: data -> tokenizer -> text encoder -> two short world models (adaLN and cross-attention, side
# by side) -> comparison; stage 2: a second dataset (interleaved scenarios, seeds from 100,000, none seen
# by the tokenizer) -> the long-trained world model with the agent map, warm-started from stage 1's
# adaLN model -> export -> evaluation. Every stage resumes when rerun. Wall-clock on the 2-core CPU
# machine: collection 13 min (stage 2: 20 min), tokenizer 38 + 15 min, text encoder 2 min, the two short
# world models 10-13 min together (one thread each), comparison 3 min, the long world model 90 min.
# The shipped model was made by exactly these commands (stage 2 read stage 1's tokenizer, text encoder
# and adaLN model from their shipped copies in gaia_gym/assets/world_model_highway: the same files).
set -euo pipefail
cd "$(dirname "$0")/.."
G=${GAIA_GYM:-.venv/bin/gaia-gym}

# the shipped model's data: --scenario-order round_robin (its validation split holds merge and
# intersection only); set SCENARIO_ORDER=interleaved for every scenario in both splits
$G collect highway --out data/highway --quiet --scenario-order "${SCENARIO_ORDER:-round_robin}"
$G train tokenizer --data data/highway --out runs/hw_tokenizer --minutes 38 --quiet
$G train tokenizer --data data/highway --out runs/hw_tok2 --preset highway --init runs/hw_tokenizer \
    --minutes 15 --steps 900 --lr 5e-4 --quiet                      # vehicles weighted (the highway preset)
$G train text-encoder --data data/highway --out runs/hw_text --quiet
WM="--data data/highway --tokenizer runs/hw_tok2 --context 8 --patch 4 --embedding digits --text-encoder runs/hw_text --steps 800 --quiet"
OMP_NUM_THREADS=1 $G train world-model $WM --out runs/hw_wm_adaln --conditions adaln --minutes 15 &
OMP_NUM_THREADS=1 $G train world-model $WM --out runs/hw_wm_cross --conditions cross --minutes 15
wait
$G eval highway --data data/highway --compare adaln=runs/hw_wm_adaln,cross=runs/hw_wm_cross --json results/highway.json

# stage 2
$G collect highway --out data/highway2 --seed 100000 --scenario-order interleaved --quiet
$G train world-model --data data/highway2 --tokenizer runs/hw_tok2 --context 8 --patch 4 --embedding digits \
    --text-encoder runs/hw_text --conditions adaln --init runs/hw_wm_adaln --steps 7000 --batch-size 32 \
    --minutes 90 --out runs/hw2_wm --quiet
if [ ! -e gaia_gym/assets/world_model_highway/config.json ]; then
  $G export --model runs/hw2_wm --out gaia_gym/assets/world_model_highway
fi
$G eval highway --data data/highway2 --compare stage1=runs/hw_wm_adaln,stage2=runs/hw2_wm \
    --key training_comparison --json results/highway.json
$G eval highway --data data/highway2 --json results/highway.json --picture results/highway_grid.png
