//! What the in-process server tests share (each test file has `mod support;`): the
//! server opened on a fresh test database with a drop directory of its own, and its
//! HTTP app for `oneshot` requests. Fixtures that need no server code (databases,
//! batches, ports, certificates) live in the `ctdata-tests` crate.

#![allow(dead_code)] // Each test file uses its own part.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use ctdata_server::config::Settings;
use ctdata_server::db::Db;
use ctdata_server::dropdir::DropDir;
use ctdata_server::ingest::Ingestor;
use ctdata_server::sources::Puller;
use ctdata_tests::TestDb;

/// The server's pieces on a test database, in a temporary folder removed on drop.
pub struct Server {
    pub settings: Settings,
    pub ingestor: Ingestor,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Default settings with `db` and a drop directory in a new temporary folder;
    /// migrated.
    pub async fn open(db: &TestDb) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings::default();
        settings.database.url = ctdata_server::config::SecretUrl::new(&db.url);
        settings.ingest.drop_dir = dir.path().join("CTData");
        let ingestor = ctdata_server::serve::open(&settings)
            .await
            .expect("open the database");
        Server {
            settings,
            ingestor,
            _dir: dir,
        }
    }

    pub fn db(&self) -> &Db {
        &self.ingestor.db
    }

    pub fn drop_root(&self) -> PathBuf {
        self.settings.ingest.drop_dir.clone()
    }

    /// The drop directory, ready for `ingest_once`, files settled after `settle`.
    pub fn drop_dir(&self, settle: Duration) -> DropDir {
        DropDir::new(
            &self.settings.ingest.drop_dir,
            self.ingestor.clone(),
            settle,
        )
        .expect("the drop directory")
    }

    /// The HTTP API and dashboard as `serve` builds them, without a socket.
    pub fn app(&self) -> Router {
        let puller = Arc::new(Puller::new(
            self.settings.sources.clone(),
            &self.settings.ingest.drop_dir,
            self.ingestor.clone(),
        ));
        let state =
            ctdata_server::serve::http_state(&self.settings, self.ingestor.clone(), puller, false);
        ctdata_server::http::app(state)
    }
}
