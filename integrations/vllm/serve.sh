#!/usr/bin/env bash
# Serve the ATLAS teacher with vLLM on one GPU machine; the same flags as
# `atlas-middleware teacher serve` (see docs/teacher.md for why each is there).
#
#   MODEL=Arc-Intelligence/ATLAS-8B-Instruct PORT=8000 TP=1 ./serve.sh [extra vllm flags...]
#
# Then point the middleware at it:
#   ATLAS_TEACHER=hosted_vllm/$MODEL ATLAS_TEACHER_API_BASE=http://<host>:$PORT/v1
set -euo pipefail

MODEL="${MODEL:-Arc-Intelligence/ATLAS-8B-Thinking}"
HOST="${HOST:-0.0.0.0}"
PORT="${PORT:-8000}"
TP="${TP:-1}"
MAX_MODEL_LEN="${MAX_MODEL_LEN:-8192}"
GPU_MEM="${GPU_MEM:-0.90}"
WAIT_S="${WAIT_S:-900}"

command -v vllm >/dev/null || { echo "vllm is not installed: pip install 'atlas-middleware[vllm]'" >&2; exit 1; }

vllm serve "$MODEL" \
  --host "$HOST" --port "$PORT" \
  --served-model-name "$MODEL" \
  --tensor-parallel-size "$TP" \
  --max-model-len "$MAX_MODEL_LEN" \
  --gpu-memory-utilization "$GPU_MEM" \
  --enable-prefix-caching \
  "$@" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true' INT TERM

# vLLM loads the weights and captures CUDA graphs before /health answers.
for _ in $(seq "$((WAIT_S / 2))"); do
  if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
    echo "teacher ready: ATLAS_TEACHER=hosted_vllm/$MODEL ATLAS_TEACHER_API_BASE=http://$(hostname -f):$PORT/v1"
    wait $PID
    exit $?
  fi
  kill -0 $PID 2>/dev/null || { echo "vllm exited before becoming healthy" >&2; wait $PID; exit 1; }
  sleep 2
done
echo "vllm not healthy after ${WAIT_S}s" >&2
kill -TERM $PID
exit 1
