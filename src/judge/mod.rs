//! Judges: scores of a simulated reply (or state) against the person's real reply.

pub mod embedding;
pub mod lexical;
