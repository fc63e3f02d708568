//! Shared image handling for every family: decoding, RGB conversion as PIL's `convert("RGB")`,
//! Pillow-exact bicubic resize and the rescale/normalise step of HF's slow image processors
//! (`transformers.image_transforms.rescale` / `normalize`).

pub mod pillow_resize;

use crate::error::{ModelError, Result};

/// CLIP normalisation constants (OpenAI CLIP, used by Qwen2-VL and EVA2-CLIP).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// An 8-bit RGB image, interleaved `[H, W, 3]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Self {
        debug_assert_eq!(data.len(), width * height * 3);
        Self { width, height, data }
    }

    /// Pillow-exact BICUBIC resize (identity when the size is unchanged, as Pillow returns a copy).
    pub fn resize_bicubic(&self, new_width: usize, new_height: usize) -> RgbImage {
        if new_width == self.width && new_height == self.height {
            return self.clone();
        }
        let data = pillow_resize::resize_bicubic_rgb8(&self.data, self.width, self.height, new_width, new_height);
        RgbImage::new(new_width, new_height, data)
    }
}

/// Limits checked before any pixel is decoded (decompression bombs).
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // 16384 x 16384: far above any model's budget, far below what exhausts memory.
        Self { max_pixels: 1 << 28 }
    }
}

/// Decodes PNG/JPEG/WebP/GIF (first frame)/BMP bytes to RGB. `what` names the source in errors.
pub fn decode_image(bytes: &[u8], what: &str, limits: DecodeLimits) -> Result<RgbImage> {
    let bad = |message: String| ModelError::Media { what: what.to_string(), message };
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(format!("cannot read image: {e}")))?;
    if reader.format().is_none() {
        return Err(bad("not a supported image format (PNG, JPEG, WebP, GIF, BMP)".into()));
    }
    let (w, h) = reader.into_dimensions().map_err(|e| bad(format!("cannot decode image header: {e}")))?;
    if w == 0 || h == 0 {
        return Err(bad(format!("image has zero size ({w}x{h})")));
    }
    if (w as u64) * (h as u64) > limits.max_pixels {
        return Err(bad(format!("image is {w}x{h} = {} pixels, over the limit of {}", w as u64 * h as u64, limits.max_pixels)));
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    let mut lim = image::Limits::default();
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(16));
    reader.limits(lim);
    let img = reader.decode().map_err(|e| bad(format!("cannot decode image: {e}")))?;
    Ok(to_rgb(img))
}

/// PIL `convert("RGB")`: alpha is dropped (not composited), grey is replicated, 16-bit samples
/// keep their high byte.
pub fn to_rgb(img: image::DynamicImage) -> RgbImage {
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    RgbImage::new(w as usize, h as usize, rgb.into_raw())
}

/// HF slow-processor rescale then normalise, per channel, to planar `[3, H, W]` f32:
/// `x = f32(f64(v) * (1/255))`, then `(x - mean) / std` in f32.
pub fn rescale_normalize_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let hw = img.width * img.height;
    let mut out = vec![0f32; 3 * hw];
    let scale = 1.0f64 / 255.0;
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let x = (px[c] as f64 * scale) as f32;
            out[c * hw + i] = (x - mean[c]) / std[c];
        }
    }
    out
}

/// The fused form of HF's fast/video processors: `(f32(v) - mean*255) / (std*255)` in f32.
pub fn fused_normalize_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let hw = img.width * img.height;
    let mut out = vec![0f32; 3 * hw];
    let m: Vec<f32> = mean.iter().map(|m| m * 255.0).collect();
    let s: Vec<f32> = std.iter().map(|s| s * 255.0).collect();
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * hw + i] = (px[c] as f32 - m[c]) / s[c];
        }
    }
    out
}
