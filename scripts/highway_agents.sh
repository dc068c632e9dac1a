#!/bin/bash
# The highway-env agents of docs/highway.md ("Agents that drive traffic"), stage by stage; every stage
# resumes or is skipped when rerun. About 75 CPU minutes on 2 cores (AVX2). Figures: results/highway.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
M=gaia_gym/assets/world_model_highway
# 1. the world model's two datasets, re-recorded with the cruise controller's action at every step
gaia-gym collect highway --out data/highway2 --seed 100000 --scenario-order interleaved --quiet
gaia-gym collect highway --out data/highway --scenario-order round_robin --quiet
# 2. the behaviour prior on per-token world-model features (early stopping on the datasets' validation episodes)
[ -f runs/hw_prior2_t8/prior.zip ] || python agents/behaviour_prior.py --data data/highway2 data/highway --model $M \
    --out runs/hw_prior2_t8 --spatial 8 --per-token --gamma 0.95 --epochs 12 --keep-best --weight-decay 0.01 --no-progress
# 3. PPO in imagination from the prior (prior term 0.3; imagined episodes end at end-head probability 0.2)
python agents/train_imagination.py --model $M --algo ppo --envs 32 --horizon 40 --n-steps 64 --batch-size 256 \
    --lr 1e-4 --gamma 0.95 --spatial 8 --per-token --init runs/hw_prior2_t8/prior.zip --prior runs/hw_prior2_t8/prior.zip \
    --prior-coef 0.3 --prior-std 0.3 --prompt-data data/highway2 --prompt-clips 4096 --end-threshold 0.2 \
    --timesteps 2000000 --minutes 14 --eval-every 100000 --eval-episodes 5 --no-progress --out runs/hw_ft_e02
# 4. PPO in the real highway-env, the baselines at 39,692 / 77,580 / 181,004 real transitions
python agents/highway.py real --out runs/hw_ppo_real --timesteps 38912 --threads 1 --subproc
[ -f runs/hw_ppo_real/ppo_39692.zip ] || cp runs/hw_ppo_real/last.zip runs/hw_ppo_real/ppo_39692.zip
python agents/highway.py real --out runs/hw_ppo_real --timesteps 77572 --threads 1 --subproc
[ -f runs/hw_ppo_real/ppo_77580.zip ] || cp runs/hw_ppo_real/last.zip runs/hw_ppo_real/ppo_77580.zip
python agents/highway.py real --out runs/hw_ppo_real --timesteps 180000 --threads 1 --subproc
cp runs/hw_ppo_real/last.zip runs/hw_ppo_real/ppo_180k.zip
# 5. every policy on the same validation seeds (choices), then once on the test seeds
python agents/highway.py evaluate --validation --seeds 20 --agent ft_e02_last=runs/hw_ft_e02/last.zip \
    --agent prior2_t8=runs/hw_prior2_t8/prior.zip --key agents_validation_fixed --json results/highway.json --no-progress
python agents/highway.py evaluate --seeds 20 --agent imagination_agent=runs/hw_ft_e02/last.zip \
    --agent behaviour_prior=runs/hw_prior2_t8/prior.zip --real ppo_real_39692=runs/hw_ppo_real/ppo_39692.zip \
    --real ppo_real_77580=runs/hw_ppo_real/ppo_77580.zip --real ppo_real_180k=runs/hw_ppo_real/ppo_180k.zip \
    --key agents_test --json results/highway.json --no-progress --calibration-plot results/highway_crash_calibration.png
