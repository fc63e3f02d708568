//! Qwen2-VL input processing: `smart_resize`, the slow image processor's resize/normalise/patchify,
//! video frame pairs, placeholder expansion and the 4.x `get_rope_index` M-RoPE positions.
//! Mirrors transformers 4.57.6 `image_processing_qwen2_vl.py`, `video_processing_qwen2_vl.py`,
//! `processing_qwen2_vl.py` and `modeling_qwen2_vl.py::get_rope_index` (spec §3, §4.2, §6.3, §7).

use super::config::{PreprocessorConfig, Qwen2VlConfig};
use crate::api::{ChatMessage, ContentPart, MediaKind, MediaSpan, Positions, PreparedMedia, PromptCodec, PromptInputs, TokenType};
use crate::error::{ModelError, Result};
use crate::image::{fused_normalize_chw, rescale_normalize_chw, RgbImage};
use candle_core::{Device, Tensor};
use serde_json::json;

/// Longest/shortest side ratio above which the reference refuses an image.
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// HF `smart_resize` (4.57): sides become multiples of `factor`, area within [min, max] pixels.
/// Python's `round` rounds halves to even, hence `round_ties_even`.
pub fn smart_resize(height: usize, width: usize, factor: usize, min_pixels: usize, max_pixels: usize) -> Result<(usize, usize)> {
    smart_resize_f64(height, width, factor, min_pixels as f64, max_pixels as f64)
}

/// `smart_resize` with the fractional budgets qwen-vl-utils computes for video frames.
pub fn smart_resize_f64(height: usize, width: usize, factor: usize, min_pixels: f64, max_pixels: f64) -> Result<(usize, usize)> {
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if height == 0 || width == 0 {
        return Err(ModelError::Prompt(format!("image has zero size ({width}x{height})")));
    }
    if h.max(w) / h.min(w) > MAX_ASPECT_RATIO {
        return Err(ModelError::Unsupported(format!(
            "image aspect ratio {:.1} ({width}x{height}) is over the limit of {MAX_ASPECT_RATIO}",
            h.max(w) / h.min(w)
        )));
    }
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels {
        let beta = (h * w / max_pixels).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// Cuts normalised planar frames `T x [3, H, W]` into Qwen2-VL patch rows:
/// rows in `[t, bh, bw, mh, mw]` order, columns in `[c, tp, py, px]` order -> `[N, C*tp*p*p]`.
pub fn patchify(frames: &[Vec<f32>], height: usize, width: usize, patch: usize, temporal: usize, merge: usize) -> (Vec<f32>, [usize; 3]) {
    let (gt, gh, gw) = (frames.len() / temporal, height / patch, width / patch);
    let cols = 3 * temporal * patch * patch;
    let mut out = Vec::with_capacity(gt * gh * gw * cols);
    let hw = height * width;
    for t in 0..gt {
        for bh in 0..gh / merge {
            for bw in 0..gw / merge {
                for mh in 0..merge {
                    for mw in 0..merge {
                        let (y0, x0) = ((bh * merge + mh) * patch, (bw * merge + mw) * patch);
                        for c in 0..3 {
                            for tp in 0..temporal {
                                let frame = &frames[t * temporal + tp];
                                for py in 0..patch {
                                    let row = c * hw + (y0 + py) * width + x0;
                                    out.extend_from_slice(&frame[row..row + patch]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (out, [gt, gh, gw])
}

/// Which normalisation formula a path uses (the slow image processor and the video processor differ
/// in the last bit).
#[derive(Clone, Copy)]
enum Normalize {
    SlowImage,
    FusedVideo,
}

pub struct Processor {
    pub pre: PreprocessorConfig,
    pub cfg: Qwen2VlConfig,
}

impl Processor {
    fn factor(&self) -> usize {
        self.pre.patch_size * self.pre.merge_size
    }

    /// One image: resize to the smart_resize size, normalise, duplicate to `temporal` frames.
    pub fn prepare_image(&self, img: &RgbImage, min_pixels: usize, max_pixels: usize) -> Result<PreparedMedia> {
        let (h, w) = smart_resize(img.height, img.width, self.factor(), min_pixels, max_pixels)?;
        let resized = img.resize_bicubic(w, h);
        let frame = self.normalize(&resized, Normalize::SlowImage);
        let frames = vec![frame; self.pre.temporal_patch_size];
        self.finish(MediaKind::Image, &frames, h, w, [img.height, img.width])
    }

    /// Frames of a video (already sampled); every frame is resized to the first frame's budget
    /// size (or to `planned_hw`, the size a video file's frames were decoded at), odd counts are
    /// padded with the last frame.
    pub fn prepare_video(&self, frames: &[RgbImage], planned_hw: Option<[usize; 2]>, min_pixels: usize, max_pixels: usize) -> Result<PreparedMedia> {
        let first = frames.first().ok_or_else(|| ModelError::Media { what: "video".into(), message: "no frames".into() })?;
        let (h, w) = match planned_hw {
            Some([h, w]) => (h, w),
            None => smart_resize(first.height, first.width, self.factor(), min_pixels, max_pixels)?,
        };
        let mut planar: Vec<Vec<f32>> = frames.iter().map(|f| self.normalize(&f.resize_bicubic(w, h), Normalize::FusedVideo)).collect();
        while !planar.len().is_multiple_of(self.pre.temporal_patch_size) {
            planar.push(planar.last().unwrap().clone());
        }
        self.finish(MediaKind::Video, &planar, h, w, [first.height, first.width])
    }

    fn normalize(&self, img: &RgbImage, how: Normalize) -> Vec<f32> {
        match how {
            Normalize::SlowImage => rescale_normalize_chw(img, self.pre.image_mean, self.pre.image_std),
            Normalize::FusedVideo => fused_normalize_chw(img, self.pre.image_mean, self.pre.image_std),
        }
    }

    fn finish(&self, kind: MediaKind, frames: &[Vec<f32>], h: usize, w: usize, orig_hw: [usize; 2]) -> Result<PreparedMedia> {
        let p = &self.pre;
        let (data, grid) = patchify(frames, h, w, p.patch_size, p.temporal_patch_size, p.merge_size);
        let rows = grid.iter().product::<usize>();
        let cols = 3 * p.temporal_patch_size * p.patch_size * p.patch_size;
        let pixel_values = Tensor::from_vec(data, (rows, cols), &Device::Cpu)?;
        Ok(PreparedMedia { kind, pixel_values, grid_thw: grid, num_tokens: rows / (p.merge_size * p.merge_size), orig_hw, resized_hw: [h, w] })
    }

    /// Chat template -> ids with one pad per item -> each pad expanded to the item's token count.
    pub fn build_prompt(&self, messages: &[ChatMessage], media: &[PreparedMedia], codec: &dyn PromptCodec) -> Result<PromptInputs> {
        let template_messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| {
                if m.content_is_string {
                    let text: String = m.parts.iter().filter_map(|p| if let ContentPart::Text(t) = p { Some(t.as_str()) } else { None }).collect();
                    return json!({"role": m.role, "content": text});
                }
                let parts: Vec<serde_json::Value> = m
                    .parts
                    .iter()
                    .map(|p| match p {
                        ContentPart::Text(t) => json!({"type": "text", "text": t}),
                        ContentPart::Media(i) => match media.get(*i).map(|m| m.kind) {
                            Some(MediaKind::Video) => json!({"type": "video"}),
                            _ => json!({"type": "image"}),
                        },
                    })
                    .collect();
                json!({"role": m.role, "content": parts})
            })
            .collect();
        let text = codec.render_chat_template(&serde_json::Value::Array(template_messages), true)?;
        let ids = codec.encode(&text, true)?;
        let order: Vec<usize> = messages
            .iter()
            .flat_map(|m| m.parts.iter().filter_map(|p| if let ContentPart::Media(i) = p { Some(*i) } else { None }))
            .collect();
        self.expand(&ids, &order, media)
    }

    /// Replaces the k-th pad token with `num_tokens` copies for the k-th media item in `order`.
    pub fn expand(&self, ids: &[u32], order: &[usize], media: &[PreparedMedia]) -> Result<PromptInputs> {
        let (img_pad, vid_pad) = (self.cfg.image_token_id, self.cfg.video_token_id);
        let pads = ids.iter().filter(|&&t| t == img_pad || t == vid_pad).count();
        if pads != order.len() {
            return Err(ModelError::Prompt(format!(
                "the rendered prompt has {pads} image/video placeholders but the request has {} media items (is `<|image_pad|>` or `<|video_pad|>` typed in the text?)",
                order.len()
            )));
        }
        let mut out = Vec::with_capacity(ids.len() + media.iter().map(|m| m.num_tokens).sum::<usize>());
        let mut spans = Vec::new();
        let mut grids = Vec::new();
        let mut next = order.iter();
        for &id in ids {
            if id == img_pad || id == vid_pad {
                let idx = *next.next().unwrap();
                let item = &media[idx];
                let want = if item.kind == MediaKind::Video { vid_pad } else { img_pad };
                if want != id {
                    return Err(ModelError::Prompt(format!("media item {idx} is a {:?} but its placeholder is the other kind", item.kind)));
                }
                spans.push(MediaSpan { media_index: idx, start: out.len(), len: item.num_tokens });
                grids.push(item.grid_thw);
                out.extend(std::iter::repeat_n(id, item.num_tokens));
            } else {
                out.push(id);
            }
        }
        let positions = get_rope_index(&out, &spans, &grids, self.pre.merge_size);
        let token_types = vec![TokenType::Text; out.len()];
        Ok(PromptInputs { token_ids: out, positions, token_types, media_spans: spans })
    }
}

/// transformers 4.x / vLLM `get_rope_index` for one unpadded sequence: text gets the same value on
/// all three rows; a vision item's (t, h, w) grid (after merging) is offset by the position its
/// first token would have had; text after it continues at offset + max(T, Hm, Wm).
pub fn get_rope_index(ids: &[u32], spans: &[MediaSpan], grids: &[[usize; 3]], merge: usize) -> Positions {
    let mut rows: [Vec<i64>; 3] = [Vec::with_capacity(ids.len()), Vec::with_capacity(ids.len()), Vec::with_capacity(ids.len())];
    let mut next_pos: i64 = 0;
    let mut cursor = 0;
    let push_text = |rows: &mut [Vec<i64>; 3], len: usize, start: i64| {
        for r in rows.iter_mut() {
            r.extend((0..len as i64).map(|i| start + i));
        }
    };
    for (span, grid) in spans.iter().zip(grids) {
        let text_len = span.start - cursor;
        push_text(&mut rows, text_len, next_pos);
        let offset = next_pos + text_len as i64;
        let (t, hm, wm) = (grid[0], grid[1] / merge, grid[2] / merge);
        for ti in 0..t {
            for hi in 0..hm {
                for wi in 0..wm {
                    rows[0].push(offset + ti as i64);
                    rows[1].push(offset + hi as i64);
                    rows[2].push(offset + wi as i64);
                }
            }
        }
        next_pos = offset + t.max(hm).max(wm) as i64;
        cursor = span.start + span.len;
    }
    push_text(&mut rows, ids.len() - cursor, next_pos);
    let max = rows.iter().flat_map(|r| r.iter().copied()).max().unwrap_or(-1);
    let delta = max + 1 - ids.len() as i64;
    Positions { rows: rows.into(), delta }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_spec_table() {
        let official = 12_845_056;
        assert_eq!(smart_resize(768, 1024, 28, 3136, official).unwrap(), (756, 1036));
        assert_eq!(smart_resize(1080, 1920, 28, 3136, official).unwrap(), (1092, 1932));
        assert_eq!(smart_resize(1080, 1920, 28, 3136, 1_003_520).unwrap(), (728, 1316));
        assert_eq!(smart_resize(70, 70, 28, 3136, official).unwrap(), (56, 56));
        assert_eq!(smart_resize(480, 640, 28, 3136, official).unwrap(), (476, 644));
        assert_eq!(smart_resize(2048, 1365, 28, 3136, official).unwrap(), (2044, 1372));
        assert_eq!(smart_resize(2048, 1365, 28, 3136, 1_003_520).unwrap(), (1204, 812));
        assert_eq!(smart_resize(4000, 6000, 28, 3136, official).unwrap(), (2912, 4368));
        assert_eq!(smart_resize(4000, 6000, 28, 3136, 1_003_520).unwrap(), (812, 1204));
        assert!(smart_resize(10, 2500, 28, 3136, official).is_err());
    }

    #[test]
    fn rope_index_worked_example_from_spec() {
        // 14 text tokens, an image with grid (1, 4, 6) -> 6 tokens, 5 trailing text tokens.
        let ids = vec![0u32; 25];
        let spans = [MediaSpan { media_index: 0, start: 14, len: 6 }];
        let p = get_rope_index(&ids, &spans, &[[1, 4, 6]], 2);
        assert_eq!(p.rows[0][14..20], [14; 6]);
        assert_eq!(p.rows[1][14..20], [14, 14, 14, 15, 15, 15]);
        assert_eq!(p.rows[2][14..20], [14, 15, 16, 14, 15, 16]);
        assert_eq!(p.rows[0][20..], [17, 18, 19, 20, 21]);
        assert_eq!(p.delta, -3);
    }
}
