//! Per-channel against flat coding of the K/V tensors of safetensors K/V dumps
//! (`[layers, heads, tokens, head_dim]`), with the chunk-wise order-0 floor of the flat
//! coding's planes: `kv_report FILE...` (the README's K/V table).

use floatzip_codec::frame::{encode_frame, FrameOptions};
use floatzip_codec::kv::{encode, KvLayout};
use floatzip_codec::safetensors::parse_header;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for path in std::env::args().skip(1) {
        let file = std::fs::read(&path)?;
        let head: [u8; 8] = file.get(..8).ok_or("short file")?.try_into()?;
        let json_end = 8 + u64::from_le_bytes(head) as usize;
        let header = parse_header(file.get(8..json_end).ok_or("short header")?)?;
        let data = &file[json_end..];
        for t in header.tensors.iter().filter(|t| t.shape.len() == 4) {
            let bytes = data
                .get(t.begin as usize..t.end as usize)
                .ok_or("tensor outside the file")?;
            let per_channel = encode(bytes, t.coded_as, &t.shape, KvLayout::Lhtd)?.len();
            let flat = encode(bytes, t.coded_as, &t.shape, KvLayout::Flat)?.len();
            let (mut floor, mut frame) = (0.0, Vec::new());
            for chunk in bytes.chunks(256 << 10) {
                frame.clear();
                floor += encode_frame(chunk, t.coded_as, &FrameOptions::default(), &mut frame)
                    .floor_bytes;
            }
            let n = bytes.len() as f64;
            println!(
                "{path} {} {}: per-channel {:.4}, flat {:.4}, flat floor {:.4}",
                t.name,
                t.coded_as.name(),
                per_channel as f64 / n,
                flat as f64 / n,
                floor / n
            );
        }
    }
    Ok(())
}
