//! OpenAI-style chat messages -> family-neutral `ChatMessage`s plus the media they reference.
//! Accepted parts: `{"type":"text","text"}`, `{"type":"image_url","image_url":{"url"}}` (file
//! paths, `file://` and `data:` URLs), `{"type":"image","image":PATH}`,
//! `{"type":"video","video":PATH or [frame paths]}` and `{"type":"video_url","video_url":{"url"}}`.
//! A media part may carry its own `fps`, `max_frames`, `min_pixels`, `max_pixels`, `total_pixels`
//! (qwen-vl-utils style). Where media may come from (local files, a directory, remote URLs)
//! is the caller's `MediaAccess`; relative paths resolve against its `base_dir`.

use crate::error::{EngineError, Result};
use base64::Engine as _;
use iris_models::image::{decode_image, DecodeLimits};
use iris_models::{ChatMessage, ContentPart, Media, MediaKind, MediaOptions, VisionLanguageModel};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub enum MediaSource {
    Path(PathBuf),
    Bytes { data: Vec<u8>, what: String },
    /// A video given as its frames.
    Frames(Vec<MediaSource>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MediaRef {
    pub kind: MediaKind,
    pub source: MediaSource,
    /// This item's own preprocessing options (over the request's).
    pub options: MediaOptions,
}

#[derive(Debug, Clone)]
pub struct Conversation {
    pub messages: Vec<ChatMessage>,
    pub media: Vec<MediaRef>,
}

const ROLES: &[&str] = &["system", "user", "assistant"];

fn req(msg: String) -> EngineError {
    EngineError::Request(msg)
}

/// Where a request's media may come from.
#[derive(Clone, Copy)]
pub struct MediaAccess<'a> {
    /// Relative paths resolve against this (the CLI: the messages file's folder).
    pub base_dir: Option<&'a Path>,
    pub local: LocalMedia<'a>,
    /// Downloads an http(s) URL (None: remote URLs are refused).
    pub fetch: Option<&'a MediaFetch<'a>>,
}

/// Downloads the bytes of a remote media URL.
pub type MediaFetch<'f> = dyn Fn(&str) -> Result<Vec<u8>> + Sync + 'f;

/// Which local files a request may read.
#[derive(Clone, Copy)]
pub enum LocalMedia<'a> {
    Any,
    /// Only files inside this directory (after resolving `..` and symlinks).
    Under(&'a Path),
    Denied,
}

impl<'a> MediaAccess<'a> {
    /// The CLI's access: any local file, relative to `base_dir`; no downloads.
    pub fn local(base_dir: Option<&'a Path>) -> Self {
        Self { base_dir, local: LocalMedia::Any, fetch: None }
    }
}

/// Resolves a URL-or-path string of a media part under the CLI's access rules.
pub fn media_source(url: &str, base_dir: Option<&Path>, field: &str) -> Result<MediaSource> {
    media_source_with(url, &MediaAccess::local(base_dir), field)
}

fn media_source_with(url: &str, access: &MediaAccess, field: &str) -> Result<MediaSource> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, payload) = rest.split_once(',').ok_or_else(|| req(format!("{field}: malformed data: URL (no comma)")))?;
        if !meta.ends_with(";base64") {
            return Err(req(format!("{field}: only base64 data: URLs are supported")));
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(payload.trim())
            .map_err(|e| req(format!("{field}: invalid base64 in data: URL: {e}")))?;
        return Ok(MediaSource::Bytes { data, what: format!("{field} (data: URL)") });
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        let Some(fetch) = access.fetch else {
            return Err(req(format!("{field}: remote URLs are not fetched here ({url}); pass a data: URL (the server fetches with --allow-remote-media)")));
        };
        return Ok(MediaSource::Bytes { data: fetch(url)?, what: format!("{field} ({url})") });
    }
    let path = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
    let path = match access.base_dir {
        Some(base) if path.is_relative() => base.join(path),
        _ => path,
    };
    match access.local {
        LocalMedia::Any => Ok(MediaSource::Path(path)),
        LocalMedia::Denied => Err(req(format!("{field}: local files are not served here ({url}); send a data: URL (the server reads files under --media-dir)"))),
        LocalMedia::Under(dir) => {
            // one answer for missing, unreadable and outside: nothing is revealed about other files
            match path.canonicalize() {
                Ok(real) if real.starts_with(dir) => Ok(MediaSource::Path(real)),
                _ => Err(req(format!("{field}: {url} is not a readable file inside the media directory"))),
            }
        }
    }
}

/// Parses a JSON array of messages (or `{"messages": [...]}`) under the CLI's access rules.
pub fn parse_messages(json: &Value, base_dir: Option<&Path>) -> Result<Conversation> {
    parse_messages_with(json, &MediaAccess::local(base_dir))
}

/// Parses messages whose media must follow `access`.
pub fn parse_messages_with(json: &Value, access: &MediaAccess) -> Result<Conversation> {
    let list = match json {
        Value::Array(a) => a,
        Value::Object(o) => o.get("messages").and_then(|m| m.as_array()).ok_or_else(|| req("expected a `messages` array".into()))?,
        _ => return Err(req("expected a JSON array of messages".into())),
    };
    if list.is_empty() {
        return Err(req("`messages` is empty".into()));
    }
    let mut messages = Vec::with_capacity(list.len());
    let mut media = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(|r| r.as_str()).ok_or_else(|| req(format!("messages[{i}].role: missing or not a string")))?;
        if !ROLES.contains(&role) {
            return Err(req(format!("messages[{i}].role: `{role}` is not one of {ROLES:?}")));
        }
        let content = m.get("content").ok_or_else(|| req(format!("messages[{i}].content: missing")))?;
        let (parts, content_is_string) = match content {
            Value::String(s) => (vec![ContentPart::Text(s.clone())], true),
            Value::Array(items) => {
                let mut parts = Vec::with_capacity(items.len());
                for (j, item) in items.iter().enumerate() {
                    let field = format!("messages[{i}].content[{j}]");
                    parts.push(parse_part(item, &field, access, &mut media)?);
                }
                (parts, false)
            }
            Value::Null if role == "assistant" => (vec![], true),
            other => return Err(req(format!("messages[{i}].content: expected a string or a list of parts, got {other}"))),
        };
        messages.push(ChatMessage { role: role.to_string(), parts, content_is_string });
    }
    Ok(Conversation { messages, media })
}

fn parse_part(item: &Value, field: &str, access: &MediaAccess, media: &mut Vec<MediaRef>) -> Result<ContentPart> {
    let kind = item.get("type").and_then(|t| t.as_str()).unwrap_or_else(|| {
        ["text", "image_url", "image", "video", "video_url"].into_iter().find(|k| item.get(k).is_some()).unwrap_or("")
    });
    let str_field = |key: &str| item.get(key).and_then(|v| v.as_str());
    let options = part_options(item, field)?;
    let mut push = |kind, source| {
        media.push(MediaRef { kind, source, options });
        Ok(ContentPart::Media(media.len() - 1))
    };
    match kind {
        "text" => Ok(ContentPart::Text(str_field("text").ok_or_else(|| req(format!("{field}.text: missing or not a string")))?.to_string())),
        key @ ("image_url" | "video_url") => {
            let url = match item.get(key) {
                Some(Value::String(s)) => s.as_str(),
                Some(v) => v.get("url").and_then(|u| u.as_str()).ok_or_else(|| req(format!("{field}.{key}.url: missing")))?,
                None => return Err(req(format!("{field}.{key}: missing"))),
            };
            let kind = if key == "video_url" { MediaKind::Video } else { MediaKind::Image };
            push(kind, media_source_with(url, access, field)?)
        }
        "image" => {
            let url = str_field("image").ok_or_else(|| req(format!("{field}.image: missing or not a string")))?;
            push(MediaKind::Image, media_source_with(url, access, field)?)
        }
        "video" => match item.get("video") {
            Some(Value::Array(frames)) => {
                let frames = frames
                    .iter()
                    .enumerate()
                    .map(|(k, f)| {
                        let url = f.as_str().ok_or_else(|| req(format!("{field}.video[{k}]: not a string")))?;
                        media_source_with(url, access, &format!("{field}.video[{k}]"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                if frames.is_empty() {
                    return Err(req(format!("{field}.video: empty frame list")));
                }
                push(MediaKind::Video, MediaSource::Frames(frames))
            }
            Some(Value::String(p)) => push(MediaKind::Video, media_source_with(p, access, field)?),
            _ => Err(req(format!("{field}.video: expected a video file path or a list of frame images"))),
        },
        other => Err(req(format!("{field}.type: unsupported part type `{other}` (text, image_url, image, video, video_url)"))),
    }
}

fn read_source(src: &MediaSource) -> Result<(Vec<u8>, String)> {
    match src {
        MediaSource::Path(p) => {
            let data = std::fs::read(p).map_err(|e| EngineError::File { path: p.display().to_string(), message: e.to_string() })?;
            Ok((data, p.display().to_string()))
        }
        MediaSource::Bytes { data, what } => Ok((data.clone(), what.clone())),
        MediaSource::Frames(_) => Err(req("nested frame lists are not allowed".into())),
    }
}

/// qwen-vl-utils-style per-item options of a media part.
fn part_options(item: &Value, field: &str) -> Result<MediaOptions> {
    let count = |key: &str| -> Result<Option<usize>> {
        match item.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| req(format!("{field}.{key}: expected a non-negative integer, got {v}"))),
        }
    };
    let fps = match item.get("fps") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_f64().filter(|f| *f > 0.0).ok_or_else(|| req(format!("{field}.fps: expected a positive number, got {v}")))?),
    };
    Ok(MediaOptions { min_pixels: count("min_pixels")?, max_pixels: count("max_pixels")?, fps, max_frames: count("max_frames")?, total_pixels: count("total_pixels")? })
}

/// A video given as bytes (a `data:` URL) goes through a temporary file for FFmpeg.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn decode_video_file(path: &Path, limits: DecodeLimits, model: &dyn VisionLanguageModel, opts: &MediaOptions) -> Result<Media> {
    let info = crate::video::probe(path, limits)?;
    let plan = model.plan_video(&info, opts).map_err(|e| match e {
        iris_models::ModelError::Media { message, .. } => EngineError::Model(iris_models::ModelError::Media { what: path.display().to_string(), message }),
        other => EngineError::Model(other),
    })?;
    Ok(Media::Video { frames: crate::video::decode_frames(path, &plan)?, from_file: true })
}

/// Reads and decodes one media reference; video files are sampled by the model's `plan_video`
/// with `opts`, the item's effective options (its own over the request's).
pub fn load_media(r: &MediaRef, limits: DecodeLimits, model: &dyn VisionLanguageModel, opts: &MediaOptions) -> Result<Media> {
    match (&r.kind, &r.source) {
        (MediaKind::Video, MediaSource::Path(p)) => decode_video_file(p, limits, model, opts),
        (MediaKind::Video, MediaSource::Bytes { data, .. }) => {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = TempFile(std::env::temp_dir().join(format!("iris-video-{}-{n}", std::process::id())));
            std::fs::write(&tmp.0, data).map_err(|e| EngineError::File { path: tmp.0.display().to_string(), message: e.to_string() })?;
            decode_video_file(&tmp.0, limits, model, opts)
        }
        (MediaKind::Video, MediaSource::Frames(frames)) => {
            let frames = frames
                .iter()
                .map(|f| {
                    let (bytes, what) = read_source(f)?;
                    Ok(decode_image(&bytes, &what, limits)?)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Media::Video { frames, from_file: false })
        }
        (_, src) => {
            let (bytes, what) = read_source(src)?;
            Ok(Media::Image(decode_image(&bytes, &what, limits)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parts_of_every_form_are_parsed_in_order() {
        let m = json!([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "a.png"}},
            {"type": "image", "image": "file:///abs/b.png"},
            {"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAEC"}}
        ]}, {"role": "assistant", "content": "ok"}]);
        let c = parse_messages(&m, Some(Path::new("/base"))).unwrap();
        assert_eq!(c.media.len(), 3);
        assert_eq!(c.media[0].source, MediaSource::Path("/base/a.png".into()));
        assert_eq!(c.media[1].source, MediaSource::Path("/abs/b.png".into()));
        assert!(matches!(&c.media[2].source, MediaSource::Bytes { data, .. } if data == &vec![0u8, 1, 2]));
        assert!(c.messages[1].content_is_string);
    }

    #[test]
    fn bad_parts_name_the_field() {
        let e = parse_messages(&json!([{"role": "user", "content": [{"type": "audio"}]}]), None).unwrap_err().to_string();
        assert!(e.contains("messages[0].content[0].type"), "{e}");
        let e = parse_messages(&json!([{"role": "robot", "content": "x"}]), None).unwrap_err().to_string();
        assert!(e.contains("messages[0].role"), "{e}");
        let e = parse_messages(&json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("base64"), "{e}");
    }
}
