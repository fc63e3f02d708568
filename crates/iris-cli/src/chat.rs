//! `iris chat`: an interactive multi-turn REPL. `/image PATH` or `/video PATH` attaches media to
//! the next message, `/reset` clears the history, `/quit` (or end of input) leaves.

use crate::args::{ModelArgs, SamplingArgs};
use crate::run::{build_request, load_engine};
use anyhow::Result;
use clap::Args;
use iris_engine::messages::{media_source, Conversation, MediaRef};
use iris_models::{ChatMessage, ContentPart, MediaKind};
use std::io::{BufRead, Write};

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A system prompt for the conversation.
    #[arg(long)]
    pub system: Option<String>,
}

pub fn chat(args: ChatArgs) -> Result<()> {
    let engine = load_engine(&args.model)?;
    let mut history = Conversation { messages: vec![], media: vec![] };
    if let Some(s) = &args.system {
        history.messages.push(ChatMessage { role: "system".into(), parts: vec![ContentPart::Text(s.clone())], content_is_string: true });
    }
    let system_len = history.messages.len();
    let mut pending: Vec<MediaRef> = Vec::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!("iris chat ({}): /image PATH or /video PATH attaches media, /reset clears, /quit leaves", engine.model.info().family);
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        let attach = [("/image ", MediaKind::Image), ("/video ", MediaKind::Video)].into_iter().find_map(|(cmd, kind)| line.strip_prefix(cmd).map(|p| (p, kind)));
        if let Some((path, kind)) = attach {
            match media_source(path.trim(), None, if kind == MediaKind::Video { "/video" } else { "/image" }) {
                Ok(source) if matches!(&source, iris_engine::messages::MediaSource::Path(p) if p.exists()) => {
                    pending.push(MediaRef { kind, source, options: Default::default() });
                    eprintln!("({} attached to the next message)", if kind == MediaKind::Video { "video" } else { "image" });
                }
                Ok(_) => eprintln!("error: {}: no such file", path.trim()),
                Err(e) => eprintln!("error: {e}"),
            }
            continue;
        }
        match line.trim() {
            "/quit" | "/exit" => break,
            "/reset" => {
                history.messages.truncate(system_len);
                history.media.clear();
                pending.clear();
                eprintln!("(history cleared)");
                continue;
            }
            cmd if cmd.starts_with('/') => {
                eprintln!("unknown command {cmd} (use /image PATH, /video PATH, /reset, /quit)");
                continue;
            }
            _ => {}
        }
        let before = (history.messages.len(), history.media.len());
        let mut parts: Vec<ContentPart> = Vec::new();
        for m in pending.drain(..) {
            history.media.push(m);
            parts.push(ContentPart::Media(history.media.len() - 1));
        }
        parts.push(ContentPart::Text(line.to_string()));
        history.messages.push(ChatMessage { role: "user".into(), parts, content_is_string: false });
        let result = build_request(&engine, &args.sampling, history.clone()).and_then(|req| {
            Ok(engine.generate(&req, &mut |piece| {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            })?)
        });
        match result {
            Ok(answer) => {
                writeln!(out)?;
                history.messages.push(ChatMessage { role: "assistant".into(), parts: vec![ContentPart::Text(answer.text)], content_is_string: true });
            }
            Err(e) => {
                // the failed turn is dropped so the conversation stays usable
                eprintln!("\nerror: {}", format!("{e:#}").replace('\n', " "));
                history.messages.truncate(before.0);
                history.media.truncate(before.1);
            }
        }
    }
    Ok(())
}
