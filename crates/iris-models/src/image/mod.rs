//! Shared image handling for every family: decoding, RGB conversion as PIL's `convert("RGB")`,
//! Pillow-exact bicubic resize and the rescale/normalise step of HF's slow image processors
//! (`transformers.image_transforms.rescale` / `normalize`).

pub mod draw;
pub mod pillow_resize;
pub mod torch_resize;

use crate::error::{ModelError, Result};

/// CLIP normalisation constants (OpenAI CLIP, used by Qwen2-VL and EVA2-CLIP), written with the
/// digits of the HF config files.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
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
        self.resize(ResizeFilter::PillowBicubic, new_width, new_height)
    }

    /// Resize with the given filter; both references return the input when the size is unchanged.
    pub fn resize(&self, filter: ResizeFilter, new_width: usize, new_height: usize) -> RgbImage {
        if new_width == self.width && new_height == self.height {
            return self.clone();
        }
        let data = match filter {
            ResizeFilter::PillowBicubic => pillow_resize::resize_bicubic_rgb8(&self.data, self.width, self.height, new_width, new_height),
            ResizeFilter::TorchvisionBicubicAntialias => torch_resize::resize_bicubic_aa_rgb8(&self.data, self.width, self.height, new_width, new_height),
        };
        RgbImage::new(new_width, new_height, data)
    }
}

/// Which reference resize a preprocessing step mirrors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeFilter {
    /// `PIL.Image.resize(size, BICUBIC)` on uint8 (HF slow image processors, qwen-vl-utils images).
    PillowBicubic,
    /// `torchvision.transforms.functional.resize(uint8 tensor, size, BICUBIC, antialias=True)`
    /// (qwen-vl-utils video frames).
    TorchvisionBicubicAntialias,
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
        let message = format!("image is {w}x{h} = {} pixels, over the limit of {}", w as u64 * h as u64, limits.max_pixels);
        return Err(ModelError::TooLarge { what: what.to_string(), message });
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    let mut lim = image::Limits::default();
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(16));
    reader.limits(lim);
    let img = reader.decode().map_err(|e| bad(format!("cannot decode image: {e}")))?;
    Ok(to_rgb(img))
}

/// Writes the image; the format follows the file extension (png, jpg, bmp, webp...).
pub fn save_image(img: &RgbImage, path: &std::path::Path) -> Result<()> {
    image::save_buffer(path, &img.data, img.width as u32, img.height as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| ModelError::Media { what: path.display().to_string(), message: format!("cannot write image: {e}") })
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

/// torchvision `ToTensor()` then `Normalize(mean, std)` to planar `[3, H, W]` f32:
/// `x = f32(v) / 255`, then `(x - mean) / std`, every step in f32 (CogVLM2's transform).
pub fn to_tensor_normalize_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let hw = img.width * img.height;
    let mut out = vec![0f32; 3 * hw];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * hw + i] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
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

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageFormat};

    fn encode(img: &DynamicImage, fmt: ImageFormat) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, fmt).unwrap();
        buf.into_inner()
    }

    #[test]
    fn every_supported_format_decodes_to_rgb() {
        let rgb = image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([(x * 40) as u8, (y * 80) as u8, 7]));
        let img = DynamicImage::ImageRgb8(rgb.clone());
        for fmt in [ImageFormat::Png, ImageFormat::Bmp, ImageFormat::WebP] {
            let got = decode_image(&encode(&img, fmt), "x", DecodeLimits::default()).unwrap();
            assert_eq!((got.width, got.height), (5, 3), "{fmt:?}");
            assert_eq!(got.data, rgb.as_raw().clone(), "{fmt:?} is lossless");
        }
        for fmt in [ImageFormat::Jpeg, ImageFormat::Gif] {
            let got = decode_image(&encode(&img, fmt), "x", DecodeLimits::default()).unwrap();
            assert_eq!((got.width, got.height), (5, 3), "{fmt:?}");
        }
    }

    #[test]
    fn alpha_and_grey_convert_like_pil_convert_rgb() {
        // RGBA: alpha dropped, never composited
        let rgba = image::RgbaImage::from_fn(2, 1, |x, _| image::Rgba([200, 100, 50, if x == 0 { 0 } else { 128 }]));
        let got = decode_image(&encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png), "rgba", DecodeLimits::default()).unwrap();
        assert_eq!(got.data, vec![200, 100, 50, 200, 100, 50]);
        // L and LA: grey replicated, alpha dropped
        let la = image::GrayAlphaImage::from_fn(2, 1, |x, _| image::LumaA([if x == 0 { 10 } else { 250 }, 3]));
        let got = decode_image(&encode(&DynamicImage::ImageLumaA8(la), ImageFormat::Png), "la", DecodeLimits::default()).unwrap();
        assert_eq!(got.data, vec![10, 10, 10, 250, 250, 250]);
        let l = image::GrayImage::from_fn(1, 1, |_, _| image::Luma([77]));
        let got = decode_image(&encode(&DynamicImage::ImageLuma8(l), ImageFormat::Png), "l", DecodeLimits::default()).unwrap();
        assert_eq!(got.data, vec![77, 77, 77]);
    }

    #[test]
    fn garbage_and_oversized_images_are_named_errors() {
        let e = decode_image(b"definitely not an image", "upload.png", DecodeLimits::default()).unwrap_err().to_string();
        assert!(e.contains("upload.png"), "{e}");
        let big = DynamicImage::ImageRgb8(image::RgbImage::new(100, 100));
        let e = decode_image(&encode(&big, ImageFormat::Png), "big.png", DecodeLimits { max_pixels: 5000 }).unwrap_err().to_string();
        assert!(e.contains("big.png") && e.contains("10000") && e.contains("5000"), "{e}");
        let png = encode(&big, ImageFormat::Png);
        let e = decode_image(&png[..png.len() / 2], "cut.png", DecodeLimits::default()).unwrap_err().to_string();
        assert!(e.contains("cut.png"), "{e}");
    }

    #[test]
    fn slow_and_fused_normalisation_follow_their_formulas() {
        let img = RgbImage::new(1, 1, vec![0, 128, 255]);
        let slow = rescale_normalize_chw(&img, CLIP_MEAN, CLIP_STD);
        let fused = fused_normalize_chw(&img, CLIP_MEAN, CLIP_STD);
        let torchvision = to_tensor_normalize_chw(&img, CLIP_MEAN, CLIP_STD);
        for c in 0..3 {
            let v = img.data[c] as f64;
            let want = ((v / 255.0) - CLIP_MEAN[c] as f64) / CLIP_STD[c] as f64;
            for got in [slow[c], fused[c], torchvision[c]] {
                assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
            }
        }
    }
}
