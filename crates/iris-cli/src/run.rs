//! `iris run`: one conversation (a question with `--image`s, or a `--messages` file) through the
//! engine, streaming text or printing one JSON object.

use crate::args::{ModelArgs, SamplingArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use iris_engine::checkpoint::resolve_model;
use iris_engine::messages::{load_media, media_source, parse_messages, Conversation, MediaRef};
use iris_engine::{Engine, GenerateOutput, GenerateRequest};
use iris_models::image::draw::draw_boxes;
use iris_models::image::{save_image, DecodeLimits};
use iris_models::{ChatMessage, ContentPart, Media, MediaKind};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// An image to ask about (repeatable; order among --image and --video is kept).
    #[arg(long)]
    pub image: Vec<PathBuf>,
    /// A video file (mp4, webm, mkv, mov, gif, ...) to ask about (repeatable).
    #[arg(long)]
    pub video: Vec<PathBuf>,
    /// An OpenAI-style messages JSON file (instead of a question).
    #[arg(long, conflicts_with_all = ["image", "video", "prompt"])]
    pub messages: Option<PathBuf>,
    /// Print one JSON object (ids, text, boxes, usage, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Write the conversation's last image with the answer's grounding boxes drawn on it.
    #[arg(long, value_name = "OUT_IMAGE")]
    pub draw_boxes: Option<PathBuf>,
    /// The question.
    pub prompt: Option<String>,
}

pub fn load_engine(model: &ModelArgs) -> Result<Engine> {
    let dir = resolve_model(&model.model)?;
    let engine = Engine::load(&dir, &model.load_options(&dir)?).with_context(|| format!("loading {}", dir.display()))?;
    let unused = engine.model.unconsumed_tensors();
    if !unused.is_empty() {
        let shown: Vec<&str> = unused.iter().take(5).map(|s| s.as_str()).collect();
        eprintln!("warning: {} checkpoint tensor(s) were not used: {}{}", unused.len(), shown.join(", "), if unused.len() > 5 { ", ..." } else { "" });
    }
    Ok(engine)
}

/// `--image` and `--video` values in command-line order (clap keeps each list's order only).
fn media_in_order(images: &[PathBuf], videos: &[PathBuf]) -> Vec<(MediaKind, PathBuf)> {
    let (mut i, mut v) = (images.iter(), videos.iter());
    let mut out = Vec::new();
    for arg in std::env::args_os() {
        let arg = arg.to_string_lossy();
        if arg == "--image" || arg.starts_with("--image=") {
            out.extend(i.next().map(|p| (MediaKind::Image, p.clone())));
        } else if arg == "--video" || arg.starts_with("--video=") {
            out.extend(v.next().map(|p| (MediaKind::Video, p.clone())));
        }
    }
    // anything not matched above (e.g. arguments given some other way) keeps its list order
    out.extend(i.map(|p| (MediaKind::Image, p.clone())));
    out.extend(v.map(|p| (MediaKind::Video, p.clone())));
    out
}

fn question_conversation(items: &[(MediaKind, PathBuf)], prompt: &str) -> Result<Conversation> {
    let mut media = Vec::new();
    let mut parts = Vec::new();
    for (kind, path) in items {
        let flag = if *kind == MediaKind::Video { "--video" } else { "--image" };
        let source = media_source(&path.to_string_lossy(), None, flag)?;
        media.push(MediaRef { kind: *kind, source, options: Default::default() });
        parts.push(ContentPart::Media(media.len() - 1));
    }
    parts.push(ContentPart::Text(prompt.to_string()));
    Ok(Conversation { messages: vec![ChatMessage { role: "user".into(), parts, content_is_string: false }], media })
}

fn messages_conversation(path: &Path) -> Result<Conversation> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let base = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
    parse_messages(&json, base).with_context(|| format!("{}", path.display()))
}

pub fn build_request(engine: &Engine, sampling: &SamplingArgs, conversation: Conversation) -> Result<GenerateRequest> {
    Ok(GenerateRequest {
        sampling: sampling.sampling(&engine.defaults)?,
        stop: sampling.stop.clone(),
        media_options: sampling.media_options(),
        prompt_options: sampling.prompt_options(),
        ..GenerateRequest::greedy(conversation, sampling.max_tokens)
    })
}

pub fn output_json(engine: &Engine, out: &GenerateOutput) -> serde_json::Value {
    json!({
        "prompt_token_ids": out.prompt_token_ids,
        "token_ids": out.token_ids,
        "text": out.text,
        "finish_reason": out.finish_reason.as_str(),
        "boxes": out.boxes,
        "usage": {"prompt_tokens": out.prompt_token_ids.len(), "completion_tokens": out.token_ids.len()},
        "timings": {
            "load_ms": engine.load_ms,
            "preprocess_ms": out.timings.preprocess_ms,
            "vision_ms": out.timings.vision_ms,
            "prefill_ms": out.timings.prefill_ms,
            "decode_tokens_per_s": out.timings.decode_tokens_per_s,
        },
    })
}

pub fn run(args: RunArgs) -> Result<()> {
    let conversation = match (&args.messages, &args.prompt) {
        (Some(path), _) => messages_conversation(path)?,
        (None, Some(prompt)) => question_conversation(&media_in_order(&args.image, &args.video), prompt)?,
        (None, None) => bail!("give a question, or --messages FILE"),
    };
    let box_image = match &args.draw_boxes {
        Some(_) => Some(conversation.media.iter().rev().find(|m| m.kind == MediaKind::Image).cloned().context("--draw-boxes needs an image in the conversation")?),
        None => None,
    };
    let engine = load_engine(&args.model)?;
    let req = build_request(&engine, &args.sampling, conversation)?;
    let out = if args.json {
        let out = engine.generate(&req, &mut |_| {})?;
        println!("{}", serde_json::to_string(&output_json(&engine, &out))?);
        out
    } else {
        let mut stdout = std::io::stdout().lock();
        let out = engine.generate(&req, &mut |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        })?;
        writeln!(stdout)?;
        out
    };
    if let (Some(path), Some(media)) = (&args.draw_boxes, box_image) {
        let Media::Image(img) = load_media(&media, DecodeLimits::default(), engine.model.as_ref(), &media.options.or(req.media_options))? else {
            unreachable!("an image reference decodes to an image")
        };
        save_image(&draw_boxes(&img, &out.boxes), path)?;
        eprintln!("wrote {} ({} box{})", path.display(), out.boxes.len(), if out.boxes.len() == 1 { "" } else { "es" });
    }
    Ok(())
}
