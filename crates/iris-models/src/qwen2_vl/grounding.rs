//! Qwen2-VL grounding output: `<|object_ref_start|>label<|object_ref_end|>` followed by one or
//! more `<|box_start|>(x1,y1),(x2,y2)<|box_end|>` with coordinates normalised to [0, 1000) of the
//! image (spec §8.1). Boxes are mapped back to pixels of the original image; malformed box text is
//! skipped, never fatal.

use crate::api::GroundingBox;

const REF_START: &str = "<|object_ref_start|>";
const REF_END: &str = "<|object_ref_end|>";
const BOX_START: &str = "<|box_start|>";
const BOX_END: &str = "<|box_end|>";

/// Parses `(x1,y1),(x2,y2)` into four integers.
fn parse_corners(s: &str) -> Option<[f64; 4]> {
    let cleaned: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let inner = cleaned.strip_prefix('(')?.strip_suffix(')')?;
    let (a, b) = inner.split_once("),(")?;
    let (x1, y1) = a.split_once(',')?;
    let (x2, y2) = b.split_once(',')?;
    let v = [x1, y1, x2, y2].map(|t| t.parse::<u32>().ok().map(f64::from));
    Some([v[0]?, v[1]?, v[2]?, v[3]?])
}

/// All well-formed boxes in `text`, in pixels of an image of `width` x `height`.
pub fn parse_boxes(text: &str, width: usize, height: usize) -> Vec<GroundingBox> {
    let mut out = Vec::new();
    let mut label = String::new();
    let mut rest = text;
    loop {
        let next_ref = rest.find(REF_START);
        let next_box = rest.find(BOX_START);
        match (next_ref, next_box) {
            (Some(r), b) if b.is_none_or(|b| r < b) => {
                let after = &rest[r + REF_START.len()..];
                match after.find(REF_END) {
                    Some(e) if !after[..e].contains(BOX_START) => {
                        label = after[..e].trim().to_string();
                        rest = &after[e + REF_END.len()..];
                    }
                    _ => rest = after,
                }
            }
            (_, Some(b)) => {
                let after = &rest[b + BOX_START.len()..];
                let Some(e) = after.find(BOX_END) else { break };
                if let Some([x1, y1, x2, y2]) = parse_corners(&after[..e]) {
                    let (w, h) = (width as f64, height as f64);
                    out.push(GroundingBox {
                        label: label.clone(),
                        x1: x1 * w / 1000.0,
                        y1: y1 * h / 1000.0,
                        x2: x2 * w / 1000.0,
                        y2: y2 * h / 1000.0,
                    });
                }
                rest = &after[e + BOX_END.len()..];
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_and_repeated_boxes_map_to_pixels() {
        let t = "Here: <|object_ref_start|>the cat<|object_ref_end|><|box_start|>(100,200),(500,1000)<|box_end|> and \
                 <|object_ref_start|>dogs<|object_ref_end|><|box_start|>(0,0),(10,10)<|box_end|><|box_start|>( 20 , 30 ),(40,50)<|box_end|>";
        let b = parse_boxes(t, 640, 480);
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].label.as_str(), b[0].x1, b[0].y1, b[0].x2, b[0].y2), ("the cat", 64.0, 96.0, 320.0, 480.0));
        assert_eq!(b[1].label, "dogs");
        assert_eq!((b[2].label.as_str(), b[2].x1, b[2].y2), ("dogs", 12.8, 24.0));
    }

    #[test]
    fn malformed_box_text_is_skipped() {
        for t in [
            "<|box_start|>(1,2),(3)<|box_end|>",
            "<|box_start|>(a,b),(c,d)<|box_end|>",
            "<|box_start|>(1,2),(3,4)",
            "<|box_start|>1,2,3,4<|box_end|>",
            "<|object_ref_start|>unterminated <|box_start|>(-1,2),(3,4)<|box_end|>",
            "no boxes at all",
        ] {
            assert!(parse_boxes(t, 100, 100).is_empty(), "{t}");
        }
        // a good box after a bad one is still found, without a label
        let b = parse_boxes("<|box_start|>(x)<|box_end|><|box_start|>(1,2),(3,4)<|box_end|>", 1000, 1000);
        assert_eq!((b.len(), b[0].label.as_str(), b[0].x2), (1, "", 3.0));
    }
}
