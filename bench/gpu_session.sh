#!/bin/bash
# The GPU measurements of docs/results/2026-11-29-bench-speed.md ("GPU") in one call of about nine minutes on a lent machine.
#
#   bash bench/prepare_gpu_carry.sh      # here, once: fills .cache/gpu (wheels, bitsandbytes, tokenizer)
#   bash bench/gpu_session.sh            # there, with .cache/gpu carried; results under $OUT
#
# Steps run in order of what they settle, each under its own time limit and within DEADLINE seconds in
# all, so that one step failing or running over still leaves the others' logs and JSON files under $OUT:
#   1. the tests that skip without CUDA (precision, attention, memory monitor and plan, optimizers, QLoRA);
#   2. configs/phi2.yaml as written (nf4, checkpointing, paged 8-bit AdamW, fp16) in a 4 GiB cap: the
#      project against HF's QLoRA recipe, tokens/s and peak memory (the 4 GB card, simulated);
#   3. phi-2 with the issue's anchors (bf16, LoRA r 16 on all linear layers, batch 8): the project against
#      HF Trainer + PEFT and HF with torch_compile=True;
#   4. the same for Llama-3.2-1B, then 5. GPT-2 XL (no HF compile), as far as the deadline allows.
set -u
OUT=${OUT:-runs/gpu}
DEADLINE=${DEADLINE:-560}
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-10}
CARRY=${CARRY:-.cache/gpu}   # what bench/prepare_gpu_carry.sh filled
mkdir -p "$OUT"
START=$SECONDS
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LOG="$OUT/session.log"

say() { echo "== $* (t=$((SECONDS - START)) s)" | tee -a "$LOG"; }

# step NAME LIMIT COMMAND...: run under min(LIMIT, time left), output appended to the session log.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - (SECONDS - START) - 5))
    if [ "$left" -lt 30 ]; then
        say "$name: skipped, ${left} s left before the deadline"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "$name: start, limit ${limit} s"
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    say "$name: exit $rc$([ $rc -eq 124 ] && echo ' (time limit)')"
}

if [ -d "$CARRY/wheels" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$CARRY"/wheels/*.whl >>"$LOG" 2>&1 \
        || { say "installing $CARRY/wheels failed"; tail -20 "$LOG"; exit 1; }
    cp -r "$CARRY"/bitsandbytes/. /tmp/site/
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
TOKENIZER=$CARRY/smollm2-tokenizer
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "no CUDA device: nothing to measure"
    cat "$LOG"
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1
"$PYTHON" - >>"$LOG" 2>&1 <<'EOF'
import importlib
for name in ("torch", "transformers", "peft", "lightning", "datasets", "jsonargparse", "bitsandbytes", "torchmetrics"):
    module = importlib.import_module(name)
    print(f"{name} {module.__version__}")
EOF
FRACTION=$("$PYTHON" -c "import torch; print(f'{4 * 2**30 / torch.cuda.get_device_properties(0).total_memory:.4f}')")
say "4 GiB is a memory fraction of $FRACTION"

step tests 100 "$PYTHON" -m pytest -p no:cacheprovider -rs -q \
    tests/unit/models/test_precision.py tests/unit/models/test_attention.py tests/unit/models/test_optimizers.py \
    tests/unit/models/test_quantization.py tests/unit/callbacks/test_memory_monitor.py \
    tests/unit/callbacks/test_memory_plan_callback.py tests/integration/test_overlays.py

R=(--random_init --tokenizer "$TOKENIZER" --steps "$STEPS" --warmup_steps 3 --repeats 1)
ANCHORS=(--model.quantization null --model.gradient_checkpointing false --model.optimizer.name adamw_fused
         --model.lora.r 16 --model.lora.alpha 32 --model.lora.target_modules all-linear
         --data.batch_size 8 --trainer.accumulate_grad_batches 1)

step phi2_4gb 170 "$PYTHON" -m bench.train_speed --config configs/phi2.yaml "${R[@]}" \
    --memory_fraction "$FRACTION" --hf_compile no --json "$OUT/phi2_4gb.json"
step phi2_anchors 170 "$PYTHON" -m bench.train_speed --config configs/phi2.yaml "${R[@]}" \
    --precision bf16-mixed --json "$OUT/phi2.json" -- "${ANCHORS[@]}"
step llama32_anchors 110 "$PYTHON" -m bench.train_speed --config configs/llama32.yaml "${R[@]}" \
    --precision bf16-mixed --json "$OUT/llama32.json" -- "${ANCHORS[@]}"
step gpt2xl_anchors 90 "$PYTHON" -m bench.train_speed --config configs/gpt2-xl.yaml "${R[@]}" \
    --precision bf16-mixed --hf_compile no --json "$OUT/gpt2xl.json" -- "${ANCHORS[@]}"

say "done"
# The summaries (the reply shows the end of the output): each bench prints its table last.
grep -E "^(== |repeat |\| |device: |[0-9]+ passed|FAILED|SKIPPED|ERROR)" "$LOG" | tail -80
