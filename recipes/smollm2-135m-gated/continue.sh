#!/usr/bin/env bash
# Continue a gated adapter with the base frozen: train FROM (an adapter folder; `train --model` puts it back on its
# base) STEPS more steps on the recipe's data (recipe.sh step 1 builds it), evaluate held-out agreement every 100 steps.
# Stage 4 of the shipped adapter: FROM = the stage-3 adapter (git show 5a923d5:hub_configs/smollm2-135m-space-gated/...),
# SEED=0, OUT=data/stage4-r16; stage 5: FROM = the stage-4 adapter (f4a6f24), SEED=1, OUT=data/stage5-r16; the 48-block
# ablation: FROM = the stage-4 adapter, SEED=1, BLOCKS=48, STEPS=170, OUT=data/stage5-b48.
# RANK above FROM's rank grows its adapters first (alpha stays 2 x rank, so what they compute is unchanged); stage 6:
# FROM = the stage-5 adapter (f9a3d0a), RANK=32, SEED=2, OUT=data/stage6-r32.
# Since stage 6 the shipped folder also carries a draft head, which is trained on a frozen adapter: continuing that
# adapter would leave the head behind, so continue from the stage-5 adapter (FROM = a folder with `git show
# 921bc1f:hub_configs/smollm2-135m-space-gated/space_adapter.safetensors` and its config), or train the head further
# (add --draft_head_width 2304 to the command below: only the head trains then).
# The result is a SPACE model folder; `transformers-space export --model $OUT --output-dir DIR --adapter-only
# --base-model transformers-space:default` turns it into an adapter. Run alone: ~6-8.4 s a step on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
FROM=${FROM:-hub_configs/smollm2-135m-space-gated}
OUT=${OUT:-data/continued}
STEPS=${STEPS:-400}
SEED=${SEED:-0}
# the adapter rank: FROM's own unless RANK asks for more
RANK=${RANK:-$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['space_config']['adapter_rank'])" \
  "$FROM/space_adapter_config.json")}
BLOCKS=${BLOCKS:-16}   # mask blocks drawn per row: each row's prefix forward is shared by all of them
transformers-space train --model "$FROM" --data data/distill_v5.jsonl --eval_data data/heldout_v5.jsonl \
  --mode gated --num_mask_tokens 4 --blocks_per_sequence "$BLOCKS" --sar_probability 1.0 --max_length 384 \
  --adapter_rank "$RANK" --adapter_alpha $((2 * RANK)) --mask_loss cross_entropy --output_dir "$OUT" \
  --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --learning_rate 5e-4 --warmup_steps 10 \
  --lr_scheduler_type cosine --max_steps "$STEPS" --eval_strategy steps --eval_steps 100 \
  --save_steps 100 --save_total_limit 5 --logging_steps 10 --report_to none --dataloader_num_workers 0 \
  --seed "$SEED"
