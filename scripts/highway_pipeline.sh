#!/usr/bin/env bash
# Rebuild the shipped highway-env world model (gaia_gym/assets/world_model_highway) from nothing:
# data -> tokenizer -> text encoder -> world models (adaLN and cross-attention, side by side) ->
# comparison -> export. Every stage resumes when rerun. Wall-clock on the 2-core CPU machine: collection
# 13 min, tokenizer 38 + 15 min, text encoder 2 min, the two world models 10-13 min together (one thread
# each), comparison 3 min. The shipped model was made by exactly these commands.
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
if [ ! -e gaia_gym/assets/world_model_highway/config.json ]; then
  $G export --model runs/hw_wm_adaln --out gaia_gym/assets/world_model_highway   # the comparison's pick
fi
$G eval highway --data data/highway --json results/highway.json --picture results/highway_grid.png
