#!/usr/bin/env bash
# llama.cpp on the same Qwen2-VL checkpoint as `iris bench --model DIR`, for BENCHMARKS.md.
# Not run in CI. Steps (all under WORK, default /tmp/llamacpp-bench):
#   1. the llama.cpp source vendored in PyPI's llama-cpp-python sdist (LLAMA_CPP_PYTHON_VERSION),
#      built with cmake from PyPI: llama-bench, llama-quantize, llama-mtmd-cli (CPU, native ISA);
#   2. llama.cpp's own convert_hf_to_gguf.py: the language model to f16 GGUF, the vision tower to
#      an f16 mmproj GGUF;
#   3. llama-quantize to Q8_0 and Q4_K_M;
#   4. llama-bench with 2 threads: prompt processing of PROMPT_TOKENS tokens and generation of
#      NEW_TOKENS tokens, as JSON lines in WORK/llama-bench.jsonl.
# A vision timing comes from llama-mtmd-cli on IMAGE (its log prints image encode time).
#
# usage: tools/bench/llamacpp_qwen2vl.sh CHECKPOINT_DIR [IMAGE]
# env:   PYTHON (an interpreter with torch, transformers, numpy, sentencepiece, safetensors;
#        default: a venv made under WORK from tools/reference/requirements.txt), WORK,
#        PROMPT_TOKENS (307), NEW_TOKENS (32), THREADS (2)
set -euo pipefail

MODEL=$(realpath "${1:?usage: $0 CHECKPOINT_DIR [IMAGE]}")
IMAGE=${2:-}
WORK=${WORK:-/tmp/llamacpp-bench}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
PROMPT_TOKENS=${PROMPT_TOKENS:-307}
NEW_TOKENS=${NEW_TOKENS:-32}
THREADS=${THREADS:-2}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$WORK"
cd "$WORK"

if [ -z "${PYTHON:-}" ]; then
  [ -x venv/bin/python ] || { python3 -m venv venv && venv/bin/pip install -q -r "$HERE/tools/reference/requirements.txt" sentencepiece protobuf; }
  PYTHON=$WORK/venv/bin/python
fi
"$PYTHON" -m pip install -q cmake

SRC=$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp
if [ ! -d "$SRC" ]; then
  url=$(curl -sf https://pypi.org/simple/llama-cpp-python/ | grep -o "https://[^\"#]*llama_cpp_python-$VERSION.tar.gz" | head -1)
  curl -sfL "$url" | tar xz
fi
CMAKE=$(dirname "$PYTHON")/cmake
if [ ! -x build/bin/llama-bench ]; then
  "$CMAKE" -S "$SRC" -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF >/dev/null
  "$CMAKE" --build build -j "$(nproc)" --target llama-bench llama-quantize llama-mtmd-cli >/dev/null
fi

[ -f lm-f16.gguf ] || "$PYTHON" "$SRC/convert_hf_to_gguf.py" "$MODEL" --outtype f16 --outfile lm-f16.gguf
[ -f mmproj-f16.gguf ] || "$PYTHON" "$SRC/convert_hf_to_gguf.py" "$MODEL" --mmproj --outtype f16 --outfile mmproj-f16.gguf
for q in Q8_0 Q4_K_M; do
  [ -f "lm-$q.gguf" ] || build/bin/llama-quantize lm-f16.gguf "lm-$q.gguf" "$q" >/dev/null
done

build/bin/llama-bench -m lm-Q8_0.gguf -m lm-Q4_K_M.gguf -p "$PROMPT_TOKENS" -n "$NEW_TOKENS" -t "$THREADS" -o jsonl | tee llama-bench.jsonl
"$PYTHON" - <<'EOF'
import json
for line in open("llama-bench.jsonl"):
    r = json.loads(line)
    kind = f"prefill {r['n_prompt']} tok" if r["n_prompt"] else f"decode {r['n_gen']} tok"
    print(f"{r['model_type']:40s} {kind:18s} {r['avg_ts']:8.2f} tok/s  (model {r['model_size'] / 1e9:.2f} GB)")
EOF

if [ -n "$IMAGE" ]; then
  for q in Q8_0 Q4_K_M; do
    echo "== llama-mtmd-cli $q, image $IMAGE"
    /usr/bin/time -v build/bin/llama-mtmd-cli -m "lm-$q.gguf" --mmproj mmproj-f16.gguf --image "$IMAGE" \
      -p "Describe this image." -n "$NEW_TOKENS" -t "$THREADS" --temp 0 2>&1 |
      grep -E "batch encoding done|eval time|Maximum resident" || true
  done
fi
