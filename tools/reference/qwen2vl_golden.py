#!/usr/bin/env python3
"""Golden reference fixtures for the Qwen2-VL family, from Hugging Face transformers 4.57.6.

Mirrors the generator behind ../shared/fixtures/qwen2-vl-tiny (its README documents every output
field): float32 weights and activations, eager attention in both towers, the SLOW PIL image
processor, greedy decoding. Not part of the build or CI; see tools/reference/README.md.

Golden cases for a checkpoint:

    python tools/reference/qwen2vl_golden.py --model DIR --cases CASES.json --out OUT \
        [--max-new-tokens 16] [--name SET] [--seed N] [--sdpa-check]

  CASES.json is a list of {"id", "description", "messages"} (or a fixture cases.json, whose
  cases carry "request": {"messages": ...}). messages are OpenAI-style: content is a string or a
  list of {"type":"text","text":...}, {"type":"image","image":PATH} and
  {"type":"video","video":[FRAME_PATH, ...]}; PATHs are relative to CASES.json. Media are copied
  to OUT/media/ (by base name) and the requests in OUT/cases.json point there. OUT gets
  cases.json and expected.safetensors; model_dir is recorded relative to OUT when the model lies
  inside OUT (e.g. --model OUT/model, as in the shared fixtures), else as an absolute path.
  Generation is pure greedy on raw logits: only the eos/pad ids of generation_config.json are
  used, never its sampling fields (temperature, top_k/top_p, repetition_penalty). --seed only
  records which --make-tiny seed made the model (fills "seed" and "init").

A tiny random model (optional):

    python tools/reference/qwen2vl_golden.py --make-tiny OUT/model --tiny-config config.json \
        --tokenizer-dir ../shared/tokenizers/qwen2-vl [--seed 1000] [--min-pixels 3136 --max-pixels 200704]

  config.json is any Qwen2-VL config (nested or flat). Init scheme (INIT below): a torch.Generator
  seeded with --seed draws float64 standard normals for each parameter in sorted in-memory name
  order (the tied lm_head is not a separate parameter), scaled and shifted as listed, rounded to
  bfloat16 and saved as bfloat16, so loading bf16 -> f32 is exact.
"""
import argparse
import json
import math
import os
import platform
import re
import shutil
import sys

import numpy as np
import PIL
import safetensors.torch
import tokenizers
import torch
import torchvision
import transformers
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from transformers import (GenerationConfig, Qwen2TokenizerFast, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                          Qwen2VLProcessor, Qwen2VLVideoProcessor)

INIT = {
    "linear/conv weights": "normal(0, 0.2)",
    "linear biases (vision qkv/proj/fc1/fc2/merger, LLM q/k/v)": "normal(0, 0.1)",
    "LayerNorm weight (vision norm1/norm2/ln_q)": "1 + normal(0, 0.1)",
    "LayerNorm bias": "normal(0, 0.1)",
    "RMSNorm weight (input/post_attention layernorm)": "1 + normal(0, 0.1)",
    "final RMSNorm weight model.norm":
        "4 + normal(0, 0.25)  (scales logits up so top-1/top-2 gaps are large)",
    "embed_tokens": "normal(0, 0.25)",
    "lm_head (untied only)": "normal(0, 0.25)",
}


# ---------------------------------------------------------------- independent checks (spec §3-4)

def smart_resize(h, w, factor, min_pixels, max_pixels):
    """HF 4.57 smart_resize (spec §3.2): Python round (half to even), max(factor, floor) branch."""
    if max(h, w) / min(h, w) > 200:
        raise ValueError(f"aspect ratio of {w}x{h} exceeds 200")
    hb, wb = round(h / factor) * factor, round(w / factor) * factor
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb = max(factor, math.floor(h / beta / factor) * factor)
        wb = max(factor, math.floor(w / beta / factor) * factor)
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


def patchify(frames, patch, tp, merge):
    """[T, C, H, W] float32 -> [T/tp * H/patch * W/patch, C*tp*patch*patch] (spec §3.5)."""
    t, c, h, w = frames.shape
    gt, gh, gw = t // tp, h // patch, w // patch
    x = frames.reshape(gt, tp, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * tp * patch * patch), [gt, gh, gw]


def image_patches(img, ip):
    """Slow Qwen2VLImageProcessor: PIL bicubic on uint8, float64 rescale, float32 normalise."""
    f = ip.patch_size * ip.merge_size
    h, w = smart_resize(img.height, img.width, f, ip.size["shortest_edge"], ip.size["longest_edge"])
    x = np.array(img.resize((w, h), Image.BICUBIC), dtype=np.uint8)
    x = (x.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(ip.image_mean, np.float32)) / np.array(ip.image_std, np.float32)
    x = np.repeat(x.transpose(2, 0, 1)[None], ip.temporal_patch_size, axis=0)
    return patchify(x, ip.patch_size, ip.temporal_patch_size, ip.merge_size), [h, w]


def video_patches(frames, vp):
    """Qwen2VLVideoProcessor: torchvision bicubic (only if the size changes), fused normalisation."""
    f = vp.patch_size * vp.merge_size
    x = torch.stack([torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1) for im in frames])
    h, w = smart_resize(x.shape[2], x.shape[3], f, vp.size["shortest_edge"], vp.size["longest_edge"])
    if (h, w) != tuple(x.shape[2:]):
        x = TF.resize(x, [h, w], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    mean = torch.tensor(vp.image_mean) * (1.0 / vp.rescale_factor)
    std = torch.tensor(vp.image_std) * (1.0 / vp.rescale_factor)
    x = (x.to(torch.float32) - mean[:, None, None]) / std[:, None, None]
    if x.shape[0] % vp.temporal_patch_size:
        x = torch.cat([x] + [x[-1:]] * (vp.temporal_patch_size - x.shape[0] % vp.temporal_patch_size))
    return patchify(x.numpy(), vp.patch_size, vp.temporal_patch_size, vp.merge_size), [h, w]


# ---------------------------------------------------------------- cases

def load_cases(path):
    data = json.load(open(path))
    cases = data["cases"] if isinstance(data, dict) else data
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for c in cases:
        msgs = c["request"]["messages"] if "request" in c else c["messages"]
        out.append({"id": c["id"], "description": c.get("description", ""), "messages": msgs, "base": base})
    return out


def copy_media(src, media_dir, copied):
    """Copy one media file to OUT/media/<basename>; return its path relative to OUT."""
    name = os.path.basename(src)
    dst = os.path.join(media_dir, name)
    if copied.setdefault(name, os.path.realpath(src)) != os.path.realpath(src):
        raise SystemExit(f"two different media files are named {name}")
    if not (os.path.exists(dst) and os.path.samefile(src, dst)):
        os.makedirs(media_dir, exist_ok=True)
        shutil.copyfile(src, dst)
    return "media/" + name


def resolve(case, out_dir, copied):
    """Returns (messages with OUT-relative media paths, vision items [(type, abs path(s), rel)])."""
    items, msgs = [], []
    media_dir = os.path.join(out_dir, "media")
    for m in case["messages"]:
        if isinstance(m["content"], str):
            msgs.append(dict(m))
            continue
        content = []
        for it in m["content"]:
            it = dict(it)
            if it.get("type") == "image_url" or "image_url" in it:
                raise SystemExit(f"{case['id']}: write image_url items as image items (see --help)")
            if it.get("type") == "image" or "image" in it:
                src = os.path.join(case["base"], it["image"])
                it["image"] = copy_media(src, media_dir, copied)
                items.append(("image", src, it["image"]))
            elif it.get("type") == "video" or "video" in it:
                srcs = [os.path.join(case["base"], f) for f in it["video"]]
                it["video"] = [copy_media(s, media_dir, copied) for s in srcs]
                items.append(("video", srcs, it["video"]))
            content.append(it)
        msgs.append({**m, "content": content})
    return msgs, items


def expand_pads(prompt, grids, merge):
    """The processor's pad expansion, redone by hand for the re-tokenisation check."""
    counts = iter([int(np.prod(g)) // merge**2 for g in grids])
    return re.sub(r"<\|image_pad\|>|<\|video_pad\|>", lambda m: m.group(0) * next(counts), prompt)


def vision_embeds(model, inputs, vision_items):
    """image_embeds / video_embeds (one tower call per kind) and vision_embeds in prompt order."""
    out, per = {}, {}
    for kind, pv, grid in (("image", "pixel_values", "image_grid_thw"),
                           ("video", "pixel_values_videos", "video_grid_thw")):
        if pv in inputs:
            feats = getattr(model.model, f"get_{kind}_features")(inputs[pv], inputs[grid])
            per[kind] = list(feats)
            out[f"{kind}_embeds"] = torch.cat(per[kind])
    if vision_items:
        out["vision_embeds"] = torch.cat([per[it["type"]].pop(0) for it in vision_items])
    return out


def run_case(case, model, gc, proc, raw_tok, out_dir, max_new, copied, sdpa_model):
    ip, vp, tok = proc.image_processor, proc.video_processor, proc.tokenizer
    msgs, items = resolve(case, out_dir, copied)
    prompt = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    images = [Image.open(src).convert("RGB") for kind, src, _ in items if kind == "image"]
    videos = [[Image.open(f).convert("RGB") for f in src] for kind, src, _ in items if kind == "video"]
    inputs = proc(text=[prompt], images=images or None, videos=videos or None, return_tensors="pt")
    ids = inputs["input_ids"]
    L = ids.shape[1]
    img_grid, vid_grid = inputs.get("image_grid_thw"), inputs.get("video_grid_thw")

    # Independent checks: preprocessing bit for bit, tokenisation with the tokenizers library.
    vision_items, img_i, vid_i = [], iter(range(len(images))), iter(range(len(videos)))
    mine = {"image": [], "video": []}
    for kind, src, rel in items:
        if kind == "image":
            img = images[next(img_i)]
            (p, grid), hw = image_patches(img, ip)
            item = {"type": "image", "source": rel, "orig_hw": [img.height, img.width]}
        else:
            frames = videos[next(vid_i)]
            (p, grid), hw = video_patches(frames, vp)
            item = {"type": "video", "source": rel, "num_frames": len(frames),
                    "orig_hw": [frames[0].height, frames[0].width]}
        mine[kind].append((p, grid))
        item.update(grid_thw=grid, resized_hw=hw, num_tokens=int(np.prod(grid)) // ip.merge_size**2)
        vision_items.append(item)
    for kind, key, grids in (("image", "pixel_values", img_grid), ("video", "pixel_values_videos", vid_grid)):
        assert (grids is None) == (not mine[kind]), f"{case['id']}: {kind} count differs"
        if mine[kind]:
            assert grids.tolist() == [g for _, g in mine[kind]], f"{case['id']}: {kind} grids differ"
            assert np.array_equal(inputs[key].numpy(), np.concatenate([p for p, _ in mine[kind]])), \
                f"{case['id']}: {key} differ from the re-implementation"
    grids = [it["grid_thw"] for it in vision_items]
    assert raw_tok.encode(expand_pads(prompt, grids, ip.merge_size)).ids == ids[0].tolist(), \
        f"{case['id']}: tokenizers library gives other ids"

    # M-RoPE positions.
    mask = torch.ones_like(ids)
    pos, deltas = model.model.get_rope_index(ids, img_grid, vid_grid, mask)
    pos = pos[:, 0, :]
    rope_delta = int(pos.max()) + 1 - L
    assert rope_delta == int(deltas.reshape(-1)[0])

    # Vision tower (one call per kind, like HF's forward), prefill logits, greedy decode.
    with torch.no_grad():
        tensors = {k: inputs[k] for k in ("pixel_values", "pixel_values_videos") if k in inputs}
        tensors.update(vision_embeds(model, inputs, vision_items))
        logits_last = model(**inputs, use_cache=False).logits[0, -1]
        tensors["logits_last"] = logits_last
        gen = model.generate(**inputs, generation_config=gc, max_new_tokens=max_new,
                             output_logits=True, return_dict_in_generate=True)
        new = gen.sequences[0, L:].tolist()
        step_logits = [lg[0].float() for lg in gen.logits]
        steps = []
        for lg in step_logits:
            v, i = torch.topk(lg, 5)
            steps.append({"top5_ids": i.tolist(), "top5_logits": v.tolist(),
                          "gap_top1_top2": float(v[0] - v[1])})
        # Every step again as a full forward over prompt + tokens so far, without cache.
        rec_diff, rec_match = 0.0, True
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        for s, lg in enumerate(step_logits):
            full = torch.cat([ids, torch.tensor([new[:s]], dtype=ids.dtype)], dim=1)
            r = model(input_ids=full, attention_mask=torch.ones_like(full), use_cache=False,
                      **extra).logits[0, -1]
            rec_diff = max(rec_diff, float((r - lg).abs().max()))
            rec_match &= int(r.argmax()) == int(lg.argmax()) == new[s]
        sdpa = None
        if sdpa_model is not None:
            s_logits = sdpa_model(**inputs, use_cache=False).logits[0, -1]
            s_vis = vision_embeds(sdpa_model, inputs, vision_items).get("vision_embeds")
            sdpa = (float((s_logits - logits_last).abs().max()),
                    float((s_vis - tensors["vision_embeds"]).abs().max()) if s_vis is not None else 0.0)

    eos = gc.eos_token_id
    case_out = {
        "id": case["id"], "description": case["description"],
        "request": {"messages": msgs, "max_new_tokens": max_new, "temperature": 0.0},
        "prompt_text": prompt, "input_ids": ids[0].tolist(), "num_prompt_tokens": L,
        "image_grid_thw": [] if img_grid is None else img_grid.tolist(),
        "video_grid_thw": [] if vid_grid is None else vid_grid.tolist(),
        "vision_items": vision_items, "position_ids": pos.tolist(), "rope_delta": rope_delta,
        "tensors": {n: {"key": f"{case['id']}.{n}", "shape": list(t.shape), "dtype": "F32"}
                    for n, t in tensors.items()},
        "generation": {
            "token_ids": new, "text": tok.decode(new, skip_special_tokens=False),
            "finish_reason": "stop" if new and new[-1] in eos else "length", "steps": steps,
            "min_gap": min(s["gap_top1_top2"] for s in steps),
            "prefill_vs_first_step_max_abs_diff": float((step_logits[0] - logits_last).abs().max()),
            "recompute_check": {"argmax_match": rec_match, "max_abs_logit_diff": rec_diff},
        },
    }
    return case_out, {f"{case['id']}.{n}": t.float().contiguous() for n, t in tensors.items()}, sdpa


def load_model(model_dir, attn):
    return Qwen2VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=attn).eval()


def dir_bytes(d, pattern=""):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
               if f.endswith(pattern) and os.path.isfile(os.path.join(d, f)))


def model_dir_field(model, out):
    """model_dir relative to OUT when the model lies inside it, else absolute."""
    model, out = os.path.abspath(model), os.path.abspath(out)
    return os.path.relpath(model, out) if model.startswith(out + os.sep) else model


def generate_fixtures(args):
    model = load_model(args.model, "eager")
    gcfg = model.generation_config
    eos = gcfg.eos_token_id if gcfg.eos_token_id is not None else model.config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    pad = gcfg.pad_token_id if gcfg.pad_token_id is not None else eos[-1]
    gc = GenerationConfig(do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad,
                          bos_token_id=gcfg.bos_token_id)
    sdpa_model = load_model(args.model, "sdpa") if args.sdpa_check else None

    ip = Qwen2VLImageProcessor.from_pretrained(args.model)
    tok = Qwen2TokenizerFast.from_pretrained(args.model)
    vp = Qwen2VLVideoProcessor.from_pretrained(args.model)
    template = json.load(open(os.path.join(args.model, "chat_template.json")))["chat_template"]
    proc = Qwen2VLProcessor(ip, tok, vp, chat_template=template)
    raw_tok = tokenizers.Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))

    os.makedirs(args.out, exist_ok=True)
    cases, tensors, copied, sdpa = [], {}, {}, []
    for case in load_cases(args.cases):
        print(f"case {case['id']}", file=sys.stderr)
        c, t, s = run_case(case, model, gc, proc, raw_tok, args.out, args.max_new_tokens, copied, sdpa_model)
        cases.append(c)
        tensors.update(t)
        if s:
            sdpa.append(s)
    tensors_path = os.path.join(args.out, "expected.safetensors")
    safetensors.torch.save_file(tensors, tensors_path, metadata={"format": "pt"})

    tc, vc = model.config.text_config, model.config.vision_config
    summary = {
        "min_top1_top2_gap": min(c["generation"]["min_gap"] for c in cases),
        "max_abs_logit_diff_cached_vs_recompute": max(
            c["generation"]["recompute_check"]["max_abs_logit_diff"] for c in cases),
    }
    if sdpa:
        summary["max_abs_logits_last_diff_eager_vs_sdpa"] = max(s[0] for s in sdpa)
        summary["max_abs_vision_embeds_diff_eager_vs_sdpa"] = max(s[1] for s in sdpa)
    summary.update(expected_safetensors_bytes=os.path.getsize(tensors_path),
                   model_dir_bytes=dir_bytes(args.model),
                   model_safetensors_bytes=dir_bytes(args.model, ".safetensors"))
    doc = {
        "format_version": 1,
        "fixture_set": args.name or os.path.basename(os.path.abspath(args.out)),
        "generated_by": "tools/reference/qwen2vl_golden.py",
        "reference": {
            "transformers": transformers.__version__, "torch": torch.__version__.split("+")[0],
            "torchvision": torchvision.__version__.split("+")[0], "pillow": PIL.__version__,
            "numpy": np.__version__, "tokenizers": tokenizers.__version__,
            "python": platform.python_version(), "device": "cpu", "dtype": "float32",
            "attn_implementation": "eager",
            "image_processor": "Qwen2VLImageProcessor (slow, PIL) from model/preprocessor_config.json",
            "video_processor": "Qwen2VLVideoProcessor (torchvision; the only video path in 4.57)",
        },
        "model_dir": model_dir_field(args.model, args.out),
        "tensors_file": "expected.safetensors",
        "seed": args.seed,
        "init": INIT if args.seed is not None else None,
        "model": {
            "text": {"hidden_size": tc.hidden_size, "intermediate_size": tc.intermediate_size,
                     "num_hidden_layers": tc.num_hidden_layers, "num_attention_heads": tc.num_attention_heads,
                     "num_key_value_heads": tc.num_key_value_heads,
                     "head_dim": tc.hidden_size // tc.num_attention_heads, "vocab_size": tc.vocab_size,
                     "rope_theta": tc.rope_theta, "rms_norm_eps": tc.rms_norm_eps,
                     "mrope_section": tc.rope_scaling["mrope_section"],
                     "tie_word_embeddings": tc.tie_word_embeddings},
            "vision": {k: getattr(vc, k) for k in (
                "depth", "embed_dim", "num_heads", "mlp_ratio", "hidden_size", "patch_size",
                "temporal_patch_size", "spatial_merge_size", "hidden_act")},
        },
        "processor": {"min_pixels": ip.size["shortest_edge"], "max_pixels": ip.size["longest_edge"]},
        "generation": {"max_new_tokens": args.max_new_tokens, "greedy": True, "eos_token_ids": eos},
        "checkpoint_renames": {},
        "summary": summary,
        "cases": cases,
    }
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out}", file=sys.stderr)


# ---------------------------------------------------------------- tiny random model

def init_of(name):
    """(mean, std) for one in-memory 4.57 parameter name, per INIT."""
    if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
        return 0.0, 0.25
    if re.search(r"language_model\.norm\.weight$", name):
        return 4.0, 0.25
    if re.search(r"(norm1|norm2|ln_q|layernorm)\.weight$", name):
        return 1.0, 0.1
    if name.endswith(".bias"):
        return 0.0, 0.1
    return 0.0, 0.2


def make_tiny(args):
    cfg = Qwen2VLConfig.from_pretrained(args.tiny_config)
    model = Qwen2VLForConditionalGeneration(cfg).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            mean, std = init_of(name)
            x = torch.randn(p.shape, generator=gen, dtype=torch.float64) * std + mean
            p.copy_(x.to(torch.bfloat16).to(p.dtype))
    out = args.make_tiny
    model.to(torch.bfloat16).save_pretrained(out)
    model.config.dtype = torch.float32  # bf16 storage, float32 compute: config.json says "float32"
    model.config.save_pretrained(out)
    # The checkpoint must use the original Qwen2-VL names (visual.*, model.*).
    st = os.path.join(out, "model.safetensors")
    weights = safetensors.torch.load_file(st)
    renames = {k: re.sub(r"^model\.language_model\.", "model.", re.sub(r"^model\.visual\.", "visual.", k))
               for k in weights}
    renames = {k: v for k, v in renames.items() if k != v}
    if renames:
        safetensors.torch.save_file({renames.get(k, k): v for k, v in weights.items()}, st,
                                    metadata={"format": "pt"})
    ip = Qwen2VLImageProcessor(min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    pp = {"min_pixels": args.min_pixels, "max_pixels": args.max_pixels, "patch_size": ip.patch_size,
          "temporal_patch_size": ip.temporal_patch_size, "merge_size": ip.merge_size,
          "image_mean": ip.image_mean, "image_std": ip.image_std,
          "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}
    gen_cfg = {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
               "do_sample": False, "transformers_version": transformers.__version__}
    for name, doc in (("generation_config.json", gen_cfg), ("preprocessor_config.json", pp)):
        with open(os.path.join(out, name), "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.json"):
        shutil.copyfile(os.path.join(args.tokenizer_dir, f), os.path.join(out, f))
    print(f"wrote tiny model (seed {args.seed}) to {out}; renames: {renames or 'none'}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="Qwen2-VL checkpoint dir")
    ap.add_argument("--cases", help="JSON list of case specs")
    ap.add_argument("--out", help="output dir (cases.json, expected.safetensors, media/)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--name", help="fixture_set name (default: base name of --out)")
    ap.add_argument("--seed", type=int, help="seed of the --make-tiny model (metadata when generating)")
    ap.add_argument("--sdpa-check", action="store_true", help="also run SDPA and record the eager/SDPA gap")
    ap.add_argument("--threads", type=int, help="torch intra-op threads")
    ap.add_argument("--make-tiny", metavar="OUT_DIR", help="build a tiny random model instead")
    ap.add_argument("--tiny-config", help="config.json for --make-tiny")
    ap.add_argument("--tokenizer-dir", help="tokenizer.json, tokenizer_config.json, chat_template.json")
    ap.add_argument("--min-pixels", type=int, default=3136)
    ap.add_argument("--max-pixels", type=int, default=200704)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.make_tiny:
        if not (args.tiny_config and args.tokenizer_dir):
            ap.error("--make-tiny needs --tiny-config and --tokenizer-dir")
        args.seed = 1000 if args.seed is None else args.seed
        make_tiny(args)
    elif args.model and args.cases and args.out:
        generate_fixtures(args)
    else:
        ap.error("give --model, --cases and --out (or --make-tiny)")


if __name__ == "__main__":
    main()
