//! Draws grounding boxes with their labels onto an image (`iris run --draw-boxes`). Labels use the
//! public-domain 8x8 bitmap font of the `font8x8` crate, scaled with the image, on a filled tab in
//! the box colour so they stay readable on any background.

use super::RgbImage;
use crate::api::GroundingBox;
use font8x8::legacy::BASIC_LEGACY;

const COLORS: [[u8; 3]; 6] = [[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180], [240, 50, 230]];

fn put(img: &mut RgbImage, x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as usize) < img.width && (y as usize) < img.height {
        let i = (y as usize * img.width + x as usize) * 3;
        img.data[i..i + 3].copy_from_slice(&c);
    }
}

fn fill(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
    for y in y0..y1 {
        for x in x0..x1 {
            put(img, x, y, c);
        }
    }
}

/// A copy of `img` with every box outlined and labelled; boxes are clipped to the image.
pub fn draw_boxes(img: &RgbImage, boxes: &[GroundingBox]) -> RgbImage {
    let mut out = img.clone();
    let side = img.width.min(img.height) as i64;
    let thick = (side / 200).max(1);
    let scale = (side / 256).clamp(1, 4);
    for (n, b) in boxes.iter().enumerate() {
        let c = COLORS[n % COLORS.len()];
        let (x0, y0, x1, y1) = (b.x1.min(b.x2).round() as i64, b.y1.min(b.y2).round() as i64, b.x1.max(b.x2).round() as i64, b.y1.max(b.y2).round() as i64);
        fill(&mut out, x0, y0, x1 + 1, y0 + thick, c);
        fill(&mut out, x0, y1 + 1 - thick, x1 + 1, y1 + 1, c);
        fill(&mut out, x0, y0, x0 + thick, y1 + 1, c);
        fill(&mut out, x1 + 1 - thick, y0, x1 + 1, y1 + 1, c);
        if b.label.is_empty() {
            continue;
        }
        let glyph = 8 * scale;
        let label: Vec<char> = b.label.chars().map(|ch| if ch.is_ascii() && !ch.is_ascii_control() { ch } else { '?' }).collect();
        // the tab sits above the box, or inside it when the box touches the top edge
        let ty = if y0 >= glyph + 2 { y0 - glyph - 2 } else { y0 + thick };
        fill(&mut out, x0, ty, x0 + glyph * label.len() as i64 + 2, ty + glyph + 2, c);
        for (i, ch) in label.iter().enumerate() {
            let bitmap = BASIC_LEGACY[*ch as usize];
            for (row, bits) in bitmap.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        let (px, py) = (x0 + 1 + i as i64 * glyph + col * scale, ty + 1 + row as i64 * scale);
                        fill(&mut out, px, py, px + scale, py + scale, [255, 255, 255]);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlines_and_labels_are_drawn_inside_the_image_only() {
        let img = RgbImage::new(100, 80, vec![0; 100 * 80 * 3]);
        let b = GroundingBox { label: "cat".into(), x1: 20.0, y1: 30.0, x2: 60.0, y2: 70.0 };
        let edge = GroundingBox { label: String::new(), x1: 90.0, y1: 0.0, x2: 150.0, y2: 10.0 };
        let out = draw_boxes(&img, &[b, edge]);
        let px = |x: usize, y: usize| &out.data[(y * 100 + x) * 3..(y * 100 + x) * 3 + 3];
        assert_eq!(px(20, 50), &COLORS[0]); // left edge
        assert_eq!(px(60, 70), &COLORS[0]); // bottom-right corner
        assert_eq!(px(40, 50), &[0, 0, 0]); // interior untouched
        assert!((20..50).any(|x| (20..30).any(|y| px(x, y) == [255, 255, 255])), "label text above the box");
        assert_eq!(px(99, 0), &COLORS[1]); // clipped box still drawn up to the border
        assert_eq!(img.data.iter().filter(|&&v| v != 0).count(), 0, "input untouched");
    }
}
