"""Concurrent streaming clients against a live `iris serve`, with random cancellations.

usage: loadtest.py BASE_URL [--clients 32] [--seconds 120] [--cancel-rate 0.2] [--max-tokens 64]
                   [--image PATH ...] [--api-key KEY] [--model NAME]

Each client loops until the deadline: a streamed chat completion (every other one with an
image, when given; with several --image, each such request takes the next in turn, so the
server sees distinct images and encodes them instead of hitting its encoder cache), abandoned after a few chunks with probability --cancel-rate. Expected
outcomes are 200 streams that end in [DONE] and 429 (queue full, retried after Retry-After).
Anything else is an error. Prints one JSON object: counts, errors, throughput, time to first
token and per-token latency percentiles.
"""

import argparse
import asyncio
import base64
import json
import random
import statistics
import sys
import time

import httpx


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def client_loop(n, args, http, image_urls, stats, deadline):
    rng = random.Random(n)
    i = 0
    while time.monotonic() < deadline:
        i += 1
        content = [{"type": "text", "text": f"Client {n} question {i}: describe what you see."}]
        if image_urls and i % 2 == 0:
            url = image_urls[(n + i // 2) % len(image_urls)]
            content.insert(0, {"type": "image_url", "image_url": {"url": url}})
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": args.max_tokens, "temperature": 0.7, "seed": n * 1000 + i, "stream": True}
        if args.model:
            body["model"] = args.model
        cancel_after = rng.randint(1, 4) if rng.random() < args.cancel_rate else None
        t0 = time.monotonic()
        first = last = None
        tokens = 0
        try:
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code == 429:
                    stats["rejected_429"] += 1
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                if r.status_code != 200:
                    stats["errors"].append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                    continue
                done = False
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        stats["errors"].append("stream error: " + chunk["error"]["message"])
                        break
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        now = time.monotonic()
                        if first is None:
                            first = now
                            stats["ttft"].append(now - t0)
                        else:
                            stats["itl"].append(now - last)
                        last = now
                        tokens += 1
                        if cancel_after is not None and tokens >= cancel_after:
                            break
                if cancel_after is not None and not done:
                    stats["cancelled"] += 1
                elif done:
                    stats["completed"] += 1
                elif not stats["errors"] or not stats["errors"][-1].startswith("stream error"):
                    stats["errors"].append("stream ended without [DONE]")
                stats["chunks"] += tokens
        except httpx.HTTPError as e:
            stats["errors"].append(f"transport: {type(e).__name__}: {e}")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--cancel-rate", type=float, default=0.2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--image", action="append", default=[], help="repeat for several images")
    ap.add_argument("--api-key")
    ap.add_argument("--model")
    args = ap.parse_args()
    image_urls = ["data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode() for path in args.image]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    stats = {"completed": 0, "cancelled": 0, "rejected_429": 0, "chunks": 0, "errors": [], "ttft": [], "itl": []}
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    t0 = time.monotonic()
    async with httpx.AsyncClient(base_url=args.base, headers=headers, timeout=httpx.Timeout(600.0), limits=limits) as http:
        deadline = t0 + args.seconds
        await asyncio.gather(*(client_loop(n, args, http, image_urls, stats, deadline) for n in range(args.clients)))
    wall = time.monotonic() - t0
    out = {
        "clients": args.clients,
        "seconds": round(wall, 1),
        "completed": stats["completed"],
        "cancelled": stats["cancelled"],
        "rejected_429": stats["rejected_429"],
        "errors": len(stats["errors"]),
        "first_errors": stats["errors"][:5],
        "streamed_chunks_per_s": round(stats["chunks"] / wall, 2),
        "requests_per_s": round((stats["completed"] + stats["cancelled"]) / wall, 3),
        "ttft_p50_s": pct(stats["ttft"], 50),
        "ttft_p95_s": pct(stats["ttft"], 95),
        "inter_chunk_p50_s": pct(stats["itl"], 50),
        "inter_chunk_p95_s": pct(stats["itl"], 95),
        "inter_chunk_mean_s": statistics.fmean(stats["itl"]) if stats["itl"] else None,
    }
    print(json.dumps(out))
    sys.exit(1 if stats["errors"] else 0)


asyncio.run(main())
