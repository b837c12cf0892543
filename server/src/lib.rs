//! CTData server: ingests field batches exactly once into one consolidated database.
//!
//! Every path into the database goes through [`ingest::Ingestor::ingest`]; the drop
//! directory ([`dropdir`]) wraps it with claim → archive, and [`serve::run`] runs the
//! loop until shutdown.

pub mod auth;
pub mod commands;
pub mod config;
pub mod connlimit;
pub mod credentials;
pub mod db;
pub mod dropdir;
pub mod export;
pub mod ftp;
pub mod http;
pub mod hygiene;
pub mod ingest;
pub mod metrics;
pub mod serve;
pub mod sources;
pub mod tls;
