//! One module per CLI command; each has its `Args` and a `run`.

pub mod bench;
pub mod compress;
pub mod decompress;
pub mod extract;
pub mod inspect;
pub mod pull;
pub mod push;
pub mod push_dir;
pub mod serve;
