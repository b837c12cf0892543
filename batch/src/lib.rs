//! The CTData batch format, version 1: the one crate the field client writes with and
//! the server reads with. Specification: `docs/batch-format.md`.
//!
//! Reading is two passes over a file on disk, both streaming in constant memory:
//! [`scan`] sniffs the format, checks size limits, hashes the decompressed content and
//! reads the header, so the caller can decide "new, duplicate or conflict" before any
//! row is stored; [`read`] then parses and validates every row and hands valid
//! sightings to a sink in file order.

mod model;

pub use model::*;
