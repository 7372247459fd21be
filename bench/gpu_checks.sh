#!/usr/bin/env bash
# Every GPU check of issue 13 in one call, about 8 minutes on one H200 (steps run in order of importance;
# a step that would start after GPU_CHECKS_BUDGET seconds, default 480, is skipped and says so):
#   1. the packed-attention kernels equal padded attention on CUDA (tests/test_logprobs.py: sdpa, flex
#      compiled, flash when flash-attn is installed) and the other log-prob tests on the GPU;
#   2. FSDP2 on the GPU: the toy loop under examples/accelerate/fsdp2.yaml, one process (one GPU), bf16; the
#      worker asserts the parameters are DTensor shards;
#   2b. the vLLM rollout backend's GPU tests (tests/test_online_vllm.py: rollouts against the policy's own
#      log-probs, weight syncs, a GRPO run); they skip, saying so, where vllm is not installed;
#   3. bench/dpo_vs_trl.py --device cuda --preset 0.3b and 1.3b (best of 2 alternating runs per side), then
#      1.3b without gradient checkpointing on both sides (the MFU criterion), then 0.3b with
#      attention_kernel=flex (to choose between flex and the per-sequence loop on GPUs);
#   4. bench/grpo_vs_trl.py --device cuda --quick (the online recipe's rollouts and updates on the GPU).
# Logs land in $OUT (the device tool's output folder) or /tmp/gpu_checks; the RESULT lines are printed last.
#
# The device image has torch, transformers, accelerate and peft but not TRL: carry TRL and its missing
# dependencies as wheels (see /work/.library/device/README.md), e.g. trl, datasets, dill, multiprocess, and
# start the call with the pip install line that README gives. Without TRL the benchmark steps fail and say so.
#
#   bash bench/gpu_checks.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
LOGS=${OUT:-/tmp/gpu_checks}
BUDGET=${GPU_CHECKS_BUDGET:-480}
mkdir -p "$LOGS"
START=$(date +%s)

step() {  # step NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    local elapsed=$(( $(date +%s) - START ))
    if (( elapsed > BUDGET )); then
        echo "== $name: SKIPPED (${elapsed}s elapsed, budget ${BUDGET}s)" | tee -a "$LOGS/summary.txt"
        return
    fi
    echo "== $name (limit ${limit}s)"
    local t0=$(date +%s)
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$LOGS/summary.txt"
    tail -n 25 "$LOGS/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/summary.txt"
$PY -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$LOGS/summary.txt"
$PY -c "import trl; print('trl', trl.__version__)" 2>/dev/null | tee -a "$LOGS/summary.txt" \
    || echo "trl: NOT INSTALLED (the benchmark steps will fail)" | tee -a "$LOGS/summary.txt"
$PY -c "import vllm; print('vllm', vllm.__version__)" 2>/dev/null | tee -a "$LOGS/summary.txt" \
    || echo "vllm: not installed (the vLLM backend's GPU tests skip)" | tee -a "$LOGS/summary.txt"
$PY -c "import flash_attn; print('flash_attn', flash_attn.__version__)" 2>/dev/null | tee -a "$LOGS/summary.txt" \
    || echo "flash_attn: not installed (flash kernel untested; auto picks sdpa)" | tee -a "$LOGS/summary.txt"

step cuda_tests 150 $PY -m pytest -q -p no:cacheprovider tests/test_logprobs.py -k "packed or chunked"
step fsdp2_gpu 90 $PY -m accelerate.commands.launch --config_file examples/accelerate/fsdp2.yaml --num_processes 1 \
    --mixed_precision bf16 tests/ddp_worker.py loop "$LOGS/fsdp_run" 4 2
step vllm_tests 180 $PY -m pytest -q -rs -p no:cacheprovider tests/test_online_vllm.py
step bench_0.3b 150 $PY bench/dpo_vs_trl.py --device cuda --preset 0.3b
step bench_1.3b 180 $PY bench/dpo_vs_trl.py --device cuda --preset 1.3b
step bench_1.3b_no_gc 120 $PY bench/dpo_vs_trl.py --device cuda --preset 1.3b --no-gc --repeats 1
step bench_0.3b_flex 100 $PY bench/dpo_vs_trl.py --device cuda --preset 0.3b --repeats 1 \
    --pluralign-set attention_kernel=flex
step bench_grpo 150 $PY bench/grpo_vs_trl.py --device cuda --quick --repeats 1

echo "== RESULT lines"
grep -h "^RESULT\|seconds per phase" "$LOGS"/bench_*.log 2>/dev/null | tee -a "$LOGS/summary.txt"
echo "== total $(( $(date +%s) - START ))s"
