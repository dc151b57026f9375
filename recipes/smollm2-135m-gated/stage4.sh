#!/usr/bin/env bash
# Stage 4: the shipped (stage-3) adapter on the original base, trained further with the base frozen (af699cb).
set -euo pipefail
cd "$(dirname "$0")/../.."
python -c "import torch; from transformers_space.hub import load_space_adapter; \
  m, t = load_space_adapter('hub_configs/smollm2-135m-space-gated', dtype=torch.float32); \
  m.save_pretrained('data/stage3-model'); t.save_pretrained('data/stage3-model')"
transformers-space train --model data/stage3-model --data data/distill_v5.jsonl --eval_data data/heldout_v5.jsonl \
  --mode gated --num_mask_tokens 4 --blocks_per_sequence 16 --sar_probability 1.0 --max_length 384 \
  --adapter_rank 16 --adapter_alpha 32 --mask_loss cross_entropy --output_dir data/stage4-r16 \
  --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --learning_rate 5e-4 --warmup_steps 10 \
  --lr_scheduler_type cosine --max_steps 400 --eval_strategy steps --eval_steps 100 \
  --save_steps 100 --save_total_limit 5 --logging_steps 10 --report_to none --dataloader_num_workers 0 --seed 0
