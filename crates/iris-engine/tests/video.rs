//! Video files end to end: committed tiny test videos (`tests/data/counter_30f_10fps.*`, 64x48,
//! 30 frames at 10 fps, frame k a flat grey 16 + 7k, made with the ffmpeg CLI) are
//! probed, sampled as qwen-vl-utils does (fps 2 -> 6 frames at indices 0,6,12,17,23,29),
//! decoded with the FFmpeg libraries and fed to the tiny Qwen2-VL; bad files are named errors.

use candle_core::{DType, Device};
use iris_engine::messages::parse_messages;
use iris_engine::video::{decode_frames, probe};
use iris_engine::{Engine, GenerateRequest};
use iris_models::image::DecodeLimits;
use iris_models::{LoadOptions, MediaKind, MediaOptions};
use serde_json::json;
use std::path::PathBuf;

mod common;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn engine() -> Engine {
    Engine::load(&common::fixture_dir().join("model"), &LoadOptions::new(DType::F32, Device::Cpu)).unwrap()
}

/// The files were drawn as full-range grey `16 + 7k`, which survives YUV and back.
fn expected_grey(k: usize) -> f64 {
    (16 + 7 * k) as f64
}

#[test]
fn every_container_decodes_the_planned_frames() {
    let engine = engine();
    for file in ["counter_30f_10fps.mp4", "counter_30f_10fps.webm", "counter_30f_10fps.mkv", "counter_30f_10fps.mov", "counter_30f_10fps.gif"] {
        let path = data(file);
        let info = probe(&path, DecodeLimits::default()).unwrap();
        assert_eq!((info.total_frames, info.width, info.height), (30, 64, 48), "{file}: {info:?}");
        assert!((info.fps - 10.0).abs() < 1e-6, "{file}: fps {}", info.fps);
        let plan = engine.model.plan_video(&info, &MediaOptions::default()).unwrap();
        assert_eq!(plan.indices, vec![0, 6, 12, 17, 23, 29], "{file}");
        // 64x48 is below the 128*28*28 frame floor: upscaled to 280x392
        assert_eq!(plan.frame_hw, [280, 392], "{file}");
        let frames = decode_frames(&path, &plan).unwrap();
        assert_eq!(frames.len(), 6, "{file}");
        for (frame, &k) in frames.iter().zip(&plan.indices) {
            assert_eq!((frame.width, frame.height), (392, 280));
            let mean = frame.data.iter().map(|&v| v as f64).sum::<f64>() / frame.data.len() as f64;
            // lossy codecs (mov: mpeg4, gif: palette) move flat greys by a few levels
            assert!((mean - expected_grey(k)).abs() <= 4.0, "{file}: frame {k} grey {mean:.1}, expected {:.1}", expected_grey(k));
        }
    }
}

#[test]
fn a_video_part_reaches_the_model_with_its_own_options() {
    let engine = engine();
    let dir = data("");
    let ask = |part: serde_json::Value| {
        let messages = json!([{"role": "user", "content": [part, {"type": "text", "text": "What happens?"}]}]);
        GenerateRequest::greedy(parse_messages(&messages, Some(&dir)).unwrap(), 4)
    };
    // default fps 2: 6 frames -> grid (3, 20, 28), 420 tokens
    let (prompt, media) = engine.prepare(&ask(json!({"type": "video", "video": "counter_30f_10fps.mp4"}))).unwrap();
    assert_eq!((media[0].kind, media[0].grid_thw, media[0].num_tokens), (MediaKind::Video, [3, 20, 28], 420));
    assert_eq!(prompt.media_spans[0].len, 420);
    // per-part options: at most 4 frames, a smaller per-frame budget
    let (_, media) = engine.prepare(&ask(json!({"type": "video", "video": "counter_30f_10fps.mkv", "max_frames": 4, "min_pixels": 3136, "max_pixels": 20000}))).unwrap();
    assert_eq!(media[0].grid_thw[0], 2, "4 frames -> 2 temporal patches");
    assert!(media[0].resized_hw[0] * media[0].resized_hw[1] <= 20000, "{:?}", media[0].resized_hw);
    // video_url with a data: URL goes through a temporary file
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(data("counter_30f_10fps.webm")).unwrap());
    let out = engine.generate(&ask(json!({"type": "video_url", "video_url": {"url": format!("data:video/webm;base64,{b64}")}})), &mut |_| {}).unwrap();
    assert_eq!(out.token_ids.len(), 4);
}

#[test]
fn bad_videos_are_named_errors() {
    let engine = engine();
    let tmp = std::env::temp_dir().join(format!("iris-video-test-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mp4 = std::fs::read(data("counter_30f_10fps.mp4")).unwrap();
    std::fs::write(tmp.join("truncated.mp4"), &mp4[..mp4.len() / 2]).unwrap();
    std::fs::write(tmp.join("garbage.mp4"), b"this is not a video at all").unwrap();
    // an HLS playlist naming a local file: the demuxer whitelist refuses it, nothing is fetched
    std::fs::write(tmp.join("playlist.mp4"), b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n").unwrap();
    let cases = [
        (data("audio_only.wav"), "no video stream"),
        (data("zero_frames.mp4"), "no video stream"),
        (data("one_frame.mp4"), "too few"),
        (tmp.join("truncated.mp4"), "truncated.mp4"),
        (tmp.join("garbage.mp4"), "garbage.mp4"),
        (tmp.join("playlist.mp4"), "cannot read video"),
        (tmp.join("missing.mp4"), "no such file"),
    ];
    for (path, needle) in cases {
        let messages = json!([{"role": "user", "content": [{"type": "video", "video": path.display().to_string()}, {"type": "text", "text": "?"}]}]);
        let req = GenerateRequest::greedy(parse_messages(&messages, None).unwrap(), 2);
        let e = format!("{:#}", engine.generate(&req, &mut |_| {}).unwrap_err());
        assert!(e.contains(needle) && e.contains(path.file_name().unwrap().to_str().unwrap()), "{}: {e}", path.display());
    }
    // frames larger than the decode limit are refused before decoding
    let e = probe(&data("counter_30f_10fps.mp4"), DecodeLimits { max_pixels: 1000 }).unwrap_err().to_string();
    assert!(e.contains("64x48") && e.contains("1000"), "{e}");
}

#[test]
fn families_without_video_refuse_it() {
    let dir = common::fixture("cogvlm2-tiny");
    let engine = Engine::load(&dir.join("model"), &LoadOptions::new(DType::F32, Device::Cpu)).unwrap();
    let messages = json!([{"role": "user", "content": [{"type": "video", "video": data("counter_30f_10fps.mp4").display().to_string()}, {"type": "text", "text": "?"}]}]);
    let e = format!("{:#}", engine.generate(&GenerateRequest::greedy(parse_messages(&messages, None).unwrap(), 2), &mut |_| {}).unwrap_err());
    assert!(e.contains("cogvlm2 does not take videos"), "{e}");
}
