#!/usr/bin/env bash
# Batched decode, Iris against llama.cpp, on the same Qwen2-VL checkpoint, for BENCHMARKS.md.
# Not run in CI. For each weight format, N sequences of PROMPT_TOKENS text tokens decode
# NEW_TOKENS tokens each at once: `iris bench --concurrent N` (the scheduler `iris serve` runs)
# against `llama-batched-bench -npl N` (N parallel sequences, one batch per step). Both report
# the aggregate decode rate while all N decode; one sequence is `iris bench` without
# --concurrent. Rounds alternate which engine runs first, since a VM's bandwidth moves.
#
# Needs tools/bench/llamacpp_qwen2vl.sh run first on the same checkpoint (its WORK folder: the
# llama.cpp build and the f16/Q8_0/Q4_K_M GGUFs); builds llama-batched-bench there and converts
# a BF16 GGUF if missing.
#
# usage: tools/bench/batched_vs_llamacpp.sh CHECKPOINT_DIR
# env:   WORK (/tmp/llamacpp-bench), IRIS (target/release/iris), FORMATS ("q4k q8_0 bf16 f16"),
#        BATCHES ("1 2 4 8"), ROUNDS (2), PROMPT_TOKENS (30), NEW_TOKENS (64), THREADS (2)
set -euo pipefail

MODEL=$(realpath "${1:?usage: $0 CHECKPOINT_DIR}")
HERE=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/tmp/llamacpp-bench}
IRIS=${IRIS:-$HERE/target/release/iris}
FORMATS=${FORMATS:-q4k q8_0 bf16 f16}
BATCHES=${BATCHES:-1 2 4 8}
ROUNDS=${ROUNDS:-2}
PROMPT_TOKENS=${PROMPT_TOKENS:-30}
NEW_TOKENS=${NEW_TOKENS:-64}
THREADS=${THREADS:-2}
[ -x "$WORK/build/bin/llama-bench" ] || { echo "run tools/bench/llamacpp_qwen2vl.sh $MODEL first (no llama.cpp build in $WORK)" >&2; exit 1; }
[ -x "$IRIS" ] || { echo "no iris binary at $IRIS (cargo build --release -p iris-cli)" >&2; exit 1; }
cd "$WORK"
[ -x build/bin/llama-batched-bench ] || venv/bin/cmake --build build -j "$(nproc)" --target llama-batched-bench >/dev/null
SRC=$(ls -d "$WORK"/llama_cpp_python-*/vendor/llama.cpp | head -1)
[ -f lm-BF16.gguf ] || venv/bin/python "$SRC/convert_hf_to_gguf.py" "$MODEL" --outtype bf16 --outfile lm-BF16.gguf

gguf_of() {
  case $1 in q4k) echo lm-Q4_K_M.gguf ;; q8_0) echo lm-Q8_0.gguf ;; bf16) echo lm-BF16.gguf ;; f16) echo lm-f16.gguf ;; esac
}
RESULTS=$WORK/batched.tsv
: > "$RESULTS"
iris_runs() { # FORMAT
  for n in $BATCHES; do
    if [ "$n" = 1 ]; then extra=(); else extra=(--concurrent "$n"); fi
    rate=$(RAYON_NUM_THREADS=$THREADS "$IRIS" bench --model "$MODEL" --quant "$1" --image none \
      --prompt-tokens "$PROMPT_TOKENS" --new-tokens "$NEW_TOKENS" "${extra[@]}" --json 2>/dev/null |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["decode_tokens_per_s"])')
    printf 'iris\t%s\t%s\t%s\n' "$1" "$n" "$rate" | tee -a "$RESULTS"
  done
}
llama_runs() { # FORMAT
  build/bin/llama-batched-bench -m "$(gguf_of "$1")" -c $(( (PROMPT_TOKENS + NEW_TOKENS) * 8 + 64 )) -b 2048 \
    -ub 512 -npp "$PROMPT_TOKENS" -ntg "$NEW_TOKENS" -npl "$(echo "$BATCHES" | tr ' ' ,)" -t "$THREADS" 2>&1 |
    awk -F'|' -v f="$1" '$2 ~ /^ *[0-9]+ *$/ { gsub(/ /, "", $4); gsub(/ /, "", $9); printf "llama\t%s\t%s\t%s\n", f, $4, $9 }' |
    tee -a "$RESULTS"
}
for round in $(seq "$ROUNDS"); do
  for f in $FORMATS; do
    if [ $((round % 2)) = 1 ]; then iris_runs "$f"; llama_runs "$f"; else llama_runs "$f"; iris_runs "$f"; fi
  done
done

python3 - "$RESULTS" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    engine, fmt, n, rate = line.split()
    runs[(engine, fmt, int(n))].append(float(rate))
print(f"{'format':6s} {'seqs':>4s} {'iris tok/s (runs)':>28s} {'llama.cpp tok/s (runs)':>28s} {'ratio of medians':>17s}")
for fmt, n in sorted({(f, n) for _, f, n in runs}, key=lambda k: (k[0], k[1])):
    mine, theirs = runs[("iris", fmt, n)], runs[("llama", fmt, n)]
    show = lambda v: " / ".join(f"{x:.1f}" for x in v)
    ratio = statistics.median(mine) / statistics.median(theirs) if mine and theirs else float("nan")
    print(f"{fmt:6s} {n:4d} {show(mine):>28s} {show(theirs):>28s} {ratio:16.2f}x")
EOF
