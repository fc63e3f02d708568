#!/usr/bin/env python3
"""Times transformers on a Qwen2-VL checkpoint the way `iris run --json` reports itself: load,
vision encode, time to first token (preprocess + vision + prefill) and decode tokens/s, plus peak
RSS. Used for the comparison rows of BENCHMARKS.md; not run in CI.

    /path/to/venv/bin/python tools/bench/transformers_qwen2vl.py --model DIR --image IMG \
        --prompt "..." --dtype bf16|f32 --new-tokens 32 --threads 2

Install: the pinned environment of tools/reference/requirements.txt.
"""
import argparse
import json
import resource
import time

import torch
from PIL import Image
from transformers import (Qwen2TokenizerFast, Qwen2VLForConditionalGeneration,
                          Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32

    t0 = time.perf_counter()
    model = Qwen2VLForConditionalGeneration.from_pretrained(a.model, torch_dtype=dtype, attn_implementation="sdpa").eval()
    processor = Qwen2VLProcessor(Qwen2VLImageProcessor.from_pretrained(a.model), Qwen2TokenizerFast.from_pretrained(a.model),
                                 Qwen2VLVideoProcessor.from_pretrained(a.model),
                                 chat_template=json.load(open(f"{a.model}/chat_template.json"))["chat_template"])
    load_s = time.perf_counter() - t0

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": a.prompt}]}]
    with torch.inference_mode():
        t1 = time.perf_counter()
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=[Image.open(a.image).convert("RGB")], return_tensors="pt")
        t2 = time.perf_counter()
        vision = model.model.visual if hasattr(model.model, "visual") else model.visual
        vision(inputs["pixel_values"].to(dtype), grid_thw=inputs["image_grid_thw"])
        vision_s = time.perf_counter() - t2
        # time to first token: preprocess + vision + prefill, measured through generate
        t3 = time.perf_counter()
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
        ttft_s = (t2 - t1) + (time.perf_counter() - t3)
        # decode: the difference between a warm 1-token and a warm N-token generate, so one-time
        # costs of the first call (allocations, kernel selection) are not booked as decode time
        t4 = time.perf_counter()
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
        one_s = time.perf_counter() - t4
        t5 = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=a.new_tokens, do_sample=False, min_new_tokens=a.new_tokens)
        total_s = time.perf_counter() - t5
    new = out.shape[1] - inputs["input_ids"].shape[1]
    decode_tps = (new - 1) / max(total_s - one_s, 1e-9)
    print(json.dumps({
        "engine": f"transformers {__import__('transformers').__version__} torch {torch.__version__}",
        "dtype": a.dtype, "threads": a.threads, "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "load_s": round(load_s, 2), "vision_ms": round(vision_s * 1e3), "ttft_ms": round(ttft_s * 1e3),
        "decode_tokens_per_s": round(decode_tps, 2), "new_tokens": int(new),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }))


if __name__ == "__main__":
    main()
