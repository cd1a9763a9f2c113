//! The HTTP plumbing around the pipeline: listener, upstream client, header
//! hygiene, response bodies and Matrix error responses.

pub mod body;
pub mod error;
pub mod framing;
pub mod headers;
pub mod listener;
pub mod upstream;
