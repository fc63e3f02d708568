// TEMPORARY placeholder while the real port is being written (will be replaced).
pub fn resize_bicubic_rgb8(src: &[u8], width: usize, height: usize, new_width: usize, new_height: usize) -> Vec<u8> {
    let mut out = vec![0u8; new_width * new_height * 3];
    for y in 0..new_height { for x in 0..new_width { let sx = x * width / new_width; let sy = y * height / new_height; for c in 0..3 { out[(y*new_width+x)*3+c] = src[(sy*width+sx)*3+c]; } } }
    out
}
