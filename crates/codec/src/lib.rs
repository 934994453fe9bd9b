//! floatzip-codec: lossless compression of neural-network tensors.
//!
//! Floats are split into byte planes ([`layout`]), each plane entropy-coded per chunk
//! ([`coders`], [`frame`]), and the frames stored in a `.fz` container ([`container`])
//! that keeps the original safetensors header verbatim, so decoding gives back the exact
//! original file.
//!
//! - compress: [`compress`] / [`compress_bytes`] / [`FzWriter`] (streaming `Write`)
//! - decompress: [`decompress`] / [`decompress_bytes`] / [`FzReader`] (streaming `Read`)
//! - random access: [`FzArchive`] (one tensor, or any byte range)
//! - delta against a base checkpoint: [`compress_delta`] / [`decompress_delta`] ([`delta`])
//! - K/V cache blocks, coded per channel group: [`kv`]

pub mod archive;
pub mod coders;
pub mod container;
pub mod delta;
mod digests;
pub mod dtype;
pub mod error;
pub mod fixed;
pub mod frame;
pub mod kv;
pub mod layout;
pub mod manifest;
pub mod reader;
pub mod safetensors;
mod wire;
pub mod writer;

pub use archive::{check_entry_digest, decode_entry_frames, FzArchive, ReadAt};
pub use delta::{compress_delta, decompress_delta};
pub use dtype::DType;
pub use error::{Error, Result};
pub use frame::FrameOptions;
pub use layout::Layout;
pub use manifest::{Entry, Manifest};
pub use reader::{decompress, decompress_bytes, decompress_with, FzReader};
pub use writer::{compress, compress_bytes, EncodeOptions, FzWriter};
