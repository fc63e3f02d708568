//! Video files through the FFmpeg libraries (`ffmpeg-next`): probe the best video stream (frame
//! count, rate, size) without decoding, then decode once from the start, keeping only the frames
//! the family's `plan_video` asked for, each converted to RGB (swscale) and resized to the planned
//! size straight away (with the filter the plan names), so memory holds only the planned frames.
//! Mirrors what qwen-vl-utils does with decord: `len(vr)` frames, `get_avg_fps()`, `get_batch`.

use crate::error::{EngineError, Result};
use ffmpeg_next as ffmpeg;
use iris_models::image::{DecodeLimits, RgbImage};
use iris_models::{VideoInfo, VideoPlan};
use std::path::Path;

fn bad(what: &str, message: impl std::fmt::Display) -> EngineError {
    EngineError::Model(iris_models::ModelError::Media { what: what.to_string(), message: message.to_string() })
}

/// Demuxers a video file may be read with: containers and raw streams, no playlists (audio-only
/// containers are readable so that they are refused as having no video stream).
const VIDEO_DEMUXERS: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,gif,mpegts,flv,ogg,mpeg,h264,hevc,m4v,asf,nut,ivf,yuv4mpegpipe,wav,mp3,flac,aac";

fn open(path: &Path) -> Result<ffmpeg::format::context::Input> {
    let what = path.display().to_string();
    ffmpeg::init().map_err(|e| bad(&what, format!("cannot initialise FFmpeg: {e}")))?;
    // FFmpeg logs every damaged packet to stderr; errors reach the user through our messages
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
    if !path.exists() {
        return Err(EngineError::File { path: what, message: "no such file".into() });
    }
    // Only local file reads and container demuxers: a playlist format (HLS, DASH, concat) could
    // otherwise make FFmpeg fetch URLs or files named inside the upload.
    let mut options = ffmpeg::Dictionary::new();
    options.set("protocol_whitelist", "file");
    options.set("format_whitelist", VIDEO_DEMUXERS);
    ffmpeg::format::input_with_dictionary(&path, options).map_err(|e| bad(&what, format!("cannot read video: {e}")))
}

/// Frame count, average frame rate and size of the best video stream.
pub fn probe(path: &Path, limits: DecodeLimits) -> Result<VideoInfo> {
    let what = path.display().to_string();
    let input = open(path)?;
    let stream = input.streams().best(ffmpeg::media::Type::Video).ok_or_else(|| bad(&what, "the file has no video stream"))?;
    let rate = stream.avg_frame_rate();
    let fps = if rate.denominator() != 0 { rate.numerator() as f64 / rate.denominator() as f64 } else { 0.0 };
    let ctx = ffmpeg::codec::context::Context::from_parameters(stream.parameters()).map_err(|e| bad(&what, format!("video stream: {e}")))?;
    let decoder = ctx.decoder().video().map_err(|e| bad(&what, format!("no decoder for the video stream: {e}")))?;
    let (width, height) = (decoder.width() as usize, decoder.height() as usize);
    if width == 0 || height == 0 {
        return Err(bad(&what, format!("video frames have zero size ({width}x{height})")));
    }
    if (width as u64) * (height as u64) > limits.max_pixels {
        let message = format!("video frames are {width}x{height} = {} pixels, over the limit of {}", width * height, limits.max_pixels);
        return Err(EngineError::Model(iris_models::ModelError::TooLarge { what: what.to_string(), message }));
    }
    let mut total_frames = stream.frames().max(0) as usize;
    if total_frames == 0 {
        // containers without a frame count (webm, mkv): duration x rate
        let tb = stream.time_base();
        let seconds = if stream.duration() > 0 && tb.denominator() != 0 {
            stream.duration() as f64 * tb.numerator() as f64 / tb.denominator() as f64
        } else if input.duration() > 0 {
            input.duration() as f64 / ffmpeg::ffi::AV_TIME_BASE as f64
        } else {
            0.0
        };
        total_frames = (seconds * fps).round() as usize;
    }
    Ok(VideoInfo { total_frames, fps, width, height })
}

/// Decodes the planned frames. Frames the file turns out not to have (a truncated file, a
/// container that overstated its count) repeat the last decoded frame; none at all is an error.
pub fn decode_frames(path: &Path, plan: &VideoPlan) -> Result<Vec<RgbImage>> {
    let what = path.display().to_string();
    let mut input = open(path)?;
    let stream = input.streams().best(ffmpeg::media::Type::Video).ok_or_else(|| bad(&what, "the file has no video stream"))?;
    let index = stream.index();
    let mut ctx = ffmpeg::codec::context::Context::from_parameters(stream.parameters()).map_err(|e| bad(&what, format!("video stream: {e}")))?;
    ctx.set_threading(ffmpeg::codec::threading::Config { kind: ffmpeg::codec::threading::Type::Frame, count: 0, ..Default::default() });
    let mut decoder = ctx.decoder().video().map_err(|e| bad(&what, format!("no decoder for the video stream: {e}")))?;
    // frame i of the result is source frame plan.indices[i], so the next wanted index is derived
    // from how many frames are kept
    let mut frames: Vec<RgbImage> = Vec::with_capacity(plan.indices.len());
    let wanted = |frames: &Vec<RgbImage>| plan.indices.get(frames.len()).copied();
    let mut next_index = 0usize;
    let mut scaler: Option<(ffmpeg::software::scaling::Context, (ffmpeg::format::Pixel, u32, u32))> = None;
    let mut decoded = ffmpeg::frame::Video::empty();
    let mut take = |decoded: &ffmpeg::frame::Video, frames: &mut Vec<RgbImage>, k: usize| -> Result<()> {
        if wanted(frames) != Some(k) {
            return Ok(());
        }
        let key = (decoded.format(), decoded.width(), decoded.height());
        if scaler.as_ref().map(|(_, k)| *k) != Some(key) {
            let s = ffmpeg::software::scaling::Context::get(key.0, key.1, key.2, ffmpeg::format::Pixel::RGB24, key.1, key.2, ffmpeg::software::scaling::Flags::BICUBIC)
                .map_err(|e| bad(&what, format!("cannot convert frame {k} to RGB: {e}")))?;
            scaler = Some((s, key));
        }
        let mut rgb = ffmpeg::frame::Video::empty();
        scaler.as_mut().unwrap().0.run(decoded, &mut rgb).map_err(|e| bad(&what, format!("cannot convert frame {k} to RGB: {e}")))?;
        let (w, h, stride) = (rgb.width() as usize, rgb.height() as usize, rgb.stride(0));
        let mut data = Vec::with_capacity(w * h * 3);
        for row in rgb.data(0).chunks(stride).take(h) {
            data.extend_from_slice(&row[..w * 3]);
        }
        let img = RgbImage::new(w, h, data).resize(plan.filter, plan.frame_hw[1], plan.frame_hw[0]);
        while wanted(frames) == Some(k) {
            frames.push(img.clone());
        }
        Ok(())
    };
    for (s, packet) in input.packets() {
        if wanted(&frames).is_none() {
            break;
        }
        if s.index() != index {
            continue;
        }
        // a damaged packet is skipped, as players do; a file with no decodable frame fails below
        if decoder.send_packet(&packet).is_err() {
            continue;
        }
        while decoder.receive_frame(&mut decoded).is_ok() {
            take(&decoded, &mut frames, next_index)?;
            next_index += 1;
        }
    }
    if wanted(&frames).is_some() {
        let _ = decoder.send_eof();
        while decoder.receive_frame(&mut decoded).is_ok() {
            take(&decoded, &mut frames, next_index)?;
            next_index += 1;
        }
    }
    let Some(last) = frames.last().cloned() else {
        return Err(bad(&what, "no frame of the video could be decoded"));
    };
    if frames.len() < plan.indices.len() {
        tracing::warn!("{what}: {} of {} planned frames exist; repeating the last one", frames.len(), plan.indices.len());
        frames.resize(plan.indices.len(), last);
    }
    Ok(frames)
}
