#!/usr/bin/env bash
# Rebuild the CarRacing pipeline from nothing: data -> tokenizer -> world model -> behaviour prior (the
# shipped agent) -> PPO in imagination from it -> scores on the 20 test tracks. Every stage resumes when
# rerun (collection records only missing episodes; the trainers continue from their last checkpoint;
# the prior reuses its replayed observations; train_imagination resumes from OUT/last.zip).
# Wall-clock on 2 CPU cores: collection 9.6 min (AMX Xeon; 25.8 on an AVX2 EPYC), tokenizer 34 min,
# world model 75 min (AVX2 EPYC), prior 4 min, PPO in imagination 5.5 min to the picked checkpoint,
# each 20-track evaluation 1 min (AMX Xeon). The shipped tokenizer, world model and agent are these
# stages' outputs; set USE_SHIPPED=1 to skip the tokenizer and world model and use the shipped ones.
# Real transitions: 197,184 (data) + 2 tracks per checkpoint evaluation (seeds 1,000,100+); the
# 20 test tracks (1,000,000-1,000,019) only score.
set -euo pipefail
cd "$(dirname "$0")/.."
G=${GAIA_GYM:-.venv/bin/gaia-gym}
PY=${PYTHON:-.venv/bin/python}

$G collect carracing --out data/carracing --quiet
MODEL=()
if [ "${USE_SHIPPED:-0}" != 1 ]; then
    $G train tokenizer --data data/carracing --out runs/tokenizer --minutes 40 --steps 8500 --quiet
    $G train world-model --data data/carracing --tokenizer runs/tokenizer --out runs/wm --minutes 75 --steps 4000 --quiet
    MODEL=(--model runs/wm)
fi
$PY agents/behaviour_prior.py --data data/carracing --out runs/prior_sp --epochs 10 --spatial 16 "${MODEL[@]}" --no-progress
$PY agents/train_imagination.py --algo ppo --envs 64 --horizon 20 --n-steps 64 --lr 1e-4 --spatial 16 \
    --init runs/prior_sp/prior.zip --prior runs/prior_sp/prior.zip --prior-coef 0.5 --prior-std 0.3 \
    --prompt-data data/carracing --prompt-clips 16384 --timesteps 300000 --minutes 20 --eval-every 100000 \
    --eval-episodes 2 --out runs/agent_kl "${MODEL[@]}" --no-progress
$PY agents/evaluate_real.py --policy runs/prior_sp/prior.zip --first-seed 1000100 --episodes 2 "${MODEL[@]}" --no-progress
$PY agents/evaluate_real.py --policy runs/prior_sp/prior.zip --as-result --json results/agents.json "${MODEL[@]}" --no-progress
$PY agents/evaluate_real.py --policy runs/agent_kl/best.zip --json results/agents.json --key imagination_agent "${MODEL[@]}" --no-progress
