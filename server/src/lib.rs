//! CTData server: ingests field batches exactly once into one consolidated database.
//!
//! Every channel (HTTP, FTP, the drop directory, remote sources, the command line)
//! hands what it received to [`deliver::Deliverer::deliver`], which ingests it through
//! [`ingest::Ingestor::ingest`] and files it away in the folders of [`layout`];
//! [`serve::run`] runs the channels until shutdown.

pub mod attachments;
pub mod auth;
pub mod commands;
pub mod config;
pub mod connlimit;
pub mod credentials;
pub mod cybertracker;
pub mod db;
pub mod deliver;
pub mod dropdir;
pub mod dwca;
pub mod export;
pub mod export_zip;
pub mod ftp;
pub mod http;
pub mod hygiene;
pub mod ingest;
pub mod ingest_media;
pub mod layout;
pub mod metrics;
pub mod openrosa;
pub mod openrosa_remap;
pub mod profile;
pub mod relay;
pub mod replica;
pub mod sendcreds;
pub mod serve;
pub mod sources;
pub mod tls;
pub mod tracks;
pub mod types;
