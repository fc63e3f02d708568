#!/usr/bin/env python3
"""Prints iris against its peers as ratios, from the JSON each benchmark already writes:

    python3 tools/bench/ratios.py --iris q8_0=iris-q8.json --iris q4k=iris-q4k.json \
        --llama /tmp/llamacpp-bench/llama-bench.jsonl [--transformers bf16=tf-bf16.json ...]

--iris FORMAT=FILE: `iris bench --model DIR --quant FORMAT --json` output (one object).
--llama FILE: llama-bench `-o jsonl` lines (tools/bench/llamacpp_qwen2vl.sh); rows are matched to
  iris formats by llama.cpp's type name (Q8_0 -> q8_0, Q4_K - Medium -> q4k).
--transformers DTYPE=FILE: tools/bench/transformers_qwen2vl.py output, compared with an iris
  run of the same DTYPE given as --iris DTYPE=FILE.
Ratios are iris / peer for speeds (higher is better for iris) and peer / iris for times.
Standard library only.
"""
import argparse
import json


def pairs(values):
    out = {}
    for v in values or []:
        key, _, path = v.partition("=")
        out[key] = path
    return out


def llama_format(model_type):
    t = model_type.lower()
    if "q8_0" in t:
        return "q8_0"
    if "q4_k" in t:
        return "q4k"
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iris", action="append", required=True)
    ap.add_argument("--llama")
    ap.add_argument("--transformers", action="append")
    a = ap.parse_args()
    iris = {k: json.load(open(p)) for k, p in pairs(a.iris).items()}
    rows = []
    if a.llama:
        for line in open(a.llama):
            r = json.loads(line)
            fmt = llama_format(r["model_type"])
            if fmt not in iris:
                continue
            me = iris[fmt]
            if r["n_gen"]:
                rows.append((f"decode tok/s, {fmt}", me["decode_tokens_per_s"], r["avg_ts"], "llama.cpp"))
            else:
                rows.append((f"prefill tok/s ({r['n_prompt']} text tokens vs iris {me['prompt_tokens']}), {fmt}", me["prefill_tokens_per_s"], r["avg_ts"], "llama.cpp"))
    for dtype, path in pairs(a.transformers).items():
        peer = json.load(open(path))
        me = iris.get(dtype)
        if me is None:
            continue
        rows.append((f"decode tok/s, {dtype}", me["decode_tokens_per_s"], peer["decode_tokens_per_s"], "transformers"))
        rows.append((f"vision ms, {dtype} (lower is better)", me["vision_ms"], peer["vision_ms"], "transformers"))
        rows.append((f"time to first token ms, {dtype} (lower is better)", me["ttft_ms"], peer["ttft_ms"], "transformers"))
    print(f"{'measure':70s} {'iris':>10s} {'peer':>10s} {'ratio':>7s}  peer")
    for name, mine, theirs, peer in rows:
        lower_better = "lower is better" in name
        ratio = (theirs / mine) if lower_better else (mine / theirs)
        print(f"{name:70s} {mine:10.2f} {theirs:10.2f} {ratio:6.2f}x  {peer}")


if __name__ == "__main__":
    main()
