//! Video frame sampling as qwen-vl-utils 0.0.8 does it for Qwen2-VL (`smart_nframes`, the
//! `torch.linspace(...).round()` frame indices, and the per-frame pixel budget derived from the
//! total-pixels budget) (spec shared/specs/qwen2-vl.md §4.1).

use super::processor::smart_resize_f64;
use crate::api::{MediaOptions, VideoInfo, VideoPlan};
use crate::error::{ModelError, Result};
use crate::image::ResizeFilter;

pub const FRAME_FACTOR: usize = 2;
pub const FPS: f64 = 2.0;
pub const FPS_MIN_FRAMES: usize = 4;
pub const FPS_MAX_FRAMES: usize = 768;
pub const VIDEO_MIN_PIXELS: usize = 128 * 28 * 28;
pub const VIDEO_MAX_PIXELS: usize = 768 * 28 * 28;
pub const VIDEO_TOTAL_PIXELS: usize = 24576 * 28 * 28;

fn round_by_factor(x: f64, f: usize) -> usize {
    ((x / f as f64).round_ties_even() as usize) * f
}

/// `smart_nframes` (fps mode): `total / video_fps * fps`, clamped to [min, max] frames, rounded to
/// an even count; an error unless 2 <= n <= total.
pub fn smart_nframes(total_frames: usize, video_fps: f64, opts: &MediaOptions) -> Result<usize> {
    let fps = opts.fps.unwrap_or(FPS);
    if !(fps.is_finite() && fps > 0.0) {
        return Err(ModelError::Prompt(format!("fps must be a positive number, got {fps}")));
    }
    if !(video_fps.is_finite() && video_fps > 0.0) {
        return Err(ModelError::Media { what: "video".into(), message: format!("the stream reports a frame rate of {video_fps}") });
    }
    if let Some(m) = opts.max_frames.filter(|&m| m > FPS_MAX_FRAMES) {
        // a header may claim any frame count; padding to it would copy frames without bound
        return Err(ModelError::Prompt(format!("max_frames {m} is over the most frames sampled from a video ({FPS_MAX_FRAMES})")));
    }
    let min_f = FPS_MIN_FRAMES.div_ceil(FRAME_FACTOR) * FRAME_FACTOR;
    let max_f = (opts.max_frames.unwrap_or(FPS_MAX_FRAMES.min(total_frames)) / FRAME_FACTOR) * FRAME_FACTOR;
    let n = total_frames as f64 / video_fps * fps;
    let n = round_by_factor(n.max(min_f as f64).min(max_f as f64), FRAME_FACTOR);
    if n < FRAME_FACTOR || n > total_frames {
        return Err(ModelError::Media {
            what: "video".into(),
            message: format!("{total_frames} frame(s) are too few: sampling needs between {FRAME_FACTOR} and the frame count (got {n})"),
        });
    }
    Ok(n)
}

/// `torch.linspace(0, total - 1, n).round()`: float32 steps filled from both ends as PyTorch's
/// kernel does, rounded half to even.
pub fn frame_indices(total_frames: usize, n: usize) -> Vec<usize> {
    if n == 1 {
        return vec![0];
    }
    let (start, end) = (0f32, (total_frames - 1) as f32);
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            let v = if i < half { start + step * i as f32 } else { end - step * (n - 1 - i) as f32 };
            v.round_ties_even() as usize
        })
        .collect()
}

/// Long videos: qwen-vl-utils 0.0.8 floors each frame at `int(min_pixels * 1.05)` pixels, so past
/// ~3.4 minutes at 2 fps the frames together exceed the total-pixels budget (a 10-minute video
/// takes 46,080 tokens, beyond Qwen2-VL's 32,768-token context; spec §4.1 worked example). Iris
/// keeps the reference plan whenever it is within the budget and otherwise samples fewer frames
/// (the largest even count whose frames fit `total`), with a warning. An explicit per-frame
/// `max_pixels` replaces the budget in qwen-vl-utils, so it is left alone.
fn fit_frames_to_budget(n: usize, frame_pixels: usize, total: f64, opts: &MediaOptions) -> Result<usize> {
    let pairs = n / FRAME_FACTOR;
    if opts.max_pixels.is_some() || (pairs * frame_pixels) as f64 <= total {
        return Ok(n);
    }
    let fit = ((total / frame_pixels as f64).floor() as usize) * FRAME_FACTOR;
    if fit < FRAME_FACTOR {
        return Err(ModelError::Prompt(format!(
            "total_pixels {total} is smaller than one pair of frames ({} pixels each)",
            frame_pixels
        )));
    }
    tracing::warn!(
        "video: {n} frames of {frame_pixels} pixels would take {} tokens, over the total_pixels budget of {} tokens; sampling {fit} frames instead",
        pairs * frame_pixels / 784,
        (total / 784.0) as usize
    );
    Ok(fit)
}

/// The frames to decode and the size each is resized to.
pub fn plan(info: &VideoInfo, opts: &MediaOptions, factor: usize) -> Result<VideoPlan> {
    if info.total_frames == 0 {
        return Err(ModelError::Media { what: "video".into(), message: "the video has no frames".into() });
    }
    let n = smart_nframes(info.total_frames, info.fps, opts)?;
    let min_pixels = opts.min_pixels.unwrap_or(VIDEO_MIN_PIXELS) as f64;
    let total = opts.total_pixels.unwrap_or(VIDEO_TOTAL_PIXELS) as f64;
    // qwen-vl-utils 0.0.8: an explicit max_pixels replaces the budget
    let max_pixels = match opts.max_pixels {
        Some(m) => m as f64,
        None => (VIDEO_MAX_PIXELS as f64).min(total / n as f64 * FRAME_FACTOR as f64).max((min_pixels * 1.05).floor()),
    };
    if min_pixels > max_pixels {
        return Err(ModelError::Prompt(format!("min_pixels {min_pixels} is larger than the per-frame max_pixels {max_pixels}")));
    }
    let (h, w) = smart_resize_f64(info.height, info.width, factor, min_pixels, max_pixels)?;
    let n = fit_frames_to_budget(n, h * w, total, opts)?;
    // qwen-vl-utils resizes the decoded frames with torchvision (tensor path), not PIL
    Ok(VideoPlan { indices: frame_indices(info.total_frames, n), frame_hw: [h, w], filter: ResizeFilter::TorchvisionBicubicAntialias })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(total: usize, fps: f64, w: usize, h: usize) -> VideoInfo {
        VideoInfo { total_frames: total, fps, width: w, height: h }
    }

    #[test]
    fn spec_worked_examples() {
        let o = MediaOptions::default();
        // 10 s @ 30 fps, 1080x1920: 20 frames at 560x1008 -> grid (10, 40, 72), 7200 tokens
        let p = plan(&info(300, 30.0, 1920, 1080), &o, 28).unwrap();
        assert_eq!((p.indices.len(), p.frame_hw), (20, [560, 1008]));
        // 2 s @ 30 fps, 360x640: 4 frames at 364x644
        let p = plan(&info(60, 30.0, 640, 360), &o, 28).unwrap();
        assert_eq!((p.indices.len(), p.frame_hw), (4, [364, 644]));
        assert_eq!(p.indices, vec![0, 20, 39, 59]);
        // 10 min @ 30 fps, 720p: the reference plans 768 frames at 224x420 -> grid (384, 16, 30),
        // 46080 tokens; over the 24576-token budget, so the frame count shrinks to 408 (24480)
        let p = plan(&info(18000, 30.0, 1280, 720), &o, 28).unwrap();
        assert_eq!((p.indices.len(), p.frame_hw), (408, [224, 420]));
        assert_eq!((p.indices[0], *p.indices.last().unwrap()), (0, 17999));
        assert!(p.indices.len() / 2 * 224 * 420 / 784 <= 24576);
        // an explicit per-frame max_pixels replaces the budget, as in qwen-vl-utils
        let p = plan(&info(18000, 30.0, 1280, 720), &MediaOptions { max_pixels: Some(105_369), ..o }, 28).unwrap();
        assert_eq!((p.indices.len(), p.frame_hw), (768, [224, 420]));
        // 3 minutes stays within the budget: the reference plan, untouched
        let p = plan(&info(5400, 30.0, 1280, 720), &o, 28).unwrap();
        assert_eq!(p.indices.len(), 360);
    }

    #[test]
    fn options_and_limits() {
        let o = MediaOptions { fps: Some(1.0), max_frames: Some(6), ..Default::default() };
        assert_eq!(smart_nframes(300, 30.0, &o).unwrap(), 6);
        // 5 frames: round(2.5) * 2 = 4, Python rounds halves to even
        assert_eq!(smart_nframes(300, 30.0, &MediaOptions { fps: Some(0.5), ..Default::default() }).unwrap(), 4);
        // three frames: clamped to 2; one frame or none: a named error
        assert_eq!(smart_nframes(3, 30.0, &MediaOptions::default()).unwrap(), 2);
        assert!(smart_nframes(1, 30.0, &MediaOptions::default()).unwrap_err().to_string().contains("too few"));
        assert!(plan(&info(0, 30.0, 64, 64), &MediaOptions::default(), 28).unwrap_err().to_string().contains("no frames"));
        assert!(smart_nframes(30, 30.0, &MediaOptions { fps: Some(-1.0), ..Default::default() }).is_err());
        // a total budget below one pair of frames at the per-frame floor: a named error
        let tiny = MediaOptions { total_pixels: Some(50_000), ..Default::default() };
        let e = plan(&info(300, 30.0, 1280, 720), &tiny, 28).unwrap_err().to_string();
        assert!(e.contains("total_pixels 50000") && e.contains("one pair of frames"), "{e}");
    }

    #[test]
    fn linspace_indices_round_half_to_even() {
        // linspace(0, 9, 4) = [0, 3, 6, 9]; linspace(0, 4, 8) has halves at 0.5714.. etc.
        assert_eq!(frame_indices(10, 4), vec![0, 3, 6, 9]);
        assert_eq!(frame_indices(6, 2), vec![0, 5]);
        // linspace(0, 3, 3) = [0, 1.5, 3] -> 1.5 rounds to 2
        assert_eq!(frame_indices(4, 3), vec![0, 2, 3]);
        // linspace(0, 5, 3) = [0, 2.5, 5] -> 2.5 rounds to 2
        assert_eq!(frame_indices(6, 3), vec![0, 2, 5]);
    }
}
