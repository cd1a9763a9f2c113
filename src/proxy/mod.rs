//! The upstream side of the pipeline: the client and its pool, header
//! hygiene and bodies. It knows nothing of the pipeline above it (`gate`)
//! nor of the config file: it takes plain settings.

pub mod body;
pub mod headers;
mod pool;
pub mod roots;
pub mod upstream;
