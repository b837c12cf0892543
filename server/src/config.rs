//! Settings in layers: built-in defaults, then a TOML file, then `CTDATA__SECTION__KEY`
//! environment variables last.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The commented example printed by `ctdata-server default-config` and shipped as
/// `deploy/ctdata.toml`. A test keeps it equal to [`Settings::default`].
pub const EXAMPLE_CONFIG: &str = include_str!("../../deploy/ctdata.toml");

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "ctdata.toml";

#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub ingest: IngestSettings,
    pub http: HttpSettings,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` (created when missing) or `postgres://USER:PASSWORD@HOST/DB`.
    pub url: String,
    pub max_connections: u32,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// The `CTData` folder devices deliver into.
    pub drop_dir: PathBuf,
    /// A file written in place is taken once its size and mtime were unchanged this long.
    pub settle_secs: f64,
    /// Full rescan of the drop directory even when no change was notified.
    pub rescan_secs: f64,
    /// Device name for files that name none (CSV / GeoJSON at the top of the drop dir).
    pub default_device: String,
    /// Largest decompressed batch accepted, in bytes.
    pub max_file_bytes: u64,
    /// Largest gzip expansion ratio accepted (gzip bomb guard).
    pub max_gzip_ratio: u64,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub bind: String,
    /// A client must send its request headers within this time (slowloris guard).
    pub header_read_timeout_secs: f64,
    /// Largest request body accepted, in bytes, as sent (compressed or not).
    pub max_body_bytes: u64,
    /// A request body that sends nothing for this long is abandoned (408).
    pub body_idle_timeout_secs: f64,
    /// Requests handled at once; more wait their turn.
    pub max_concurrent_requests: usize,
    /// PEM certificate chain (server certificate first). With `tls_key`, `bind` speaks
    /// HTTPS instead of HTTP; set both or neither.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Devices whose token may also download the consolidated sightings
    /// (`GET /api/v1/sightings`, the field client's `pull`). Empty: administrators only.
    pub read_devices: Vec<String>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: "sqlite://./ctdata-data/ctdata.db".into(),
            max_connections: 8,
        }
    }
}

impl Default for IngestSettings {
    fn default() -> Self {
        let limits = ctdata_batch::Limits::default();
        IngestSettings {
            drop_dir: PathBuf::from("./ctdata-data/CTData"),
            settle_secs: 2.0,
            rescan_secs: 30.0,
            default_device: "unassigned".into(),
            max_file_bytes: limits.max_bytes,
            max_gzip_ratio: limits.max_gzip_ratio,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            bind: "127.0.0.1:8080".into(),
            header_read_timeout_secs: 10.0,
            max_body_bytes: 1 << 30,
            body_idle_timeout_secs: 60.0,
            max_concurrent_requests: 256,
            tls_cert: None,
            tls_key: None,
            read_devices: Vec::new(),
        }
    }
}

impl IngestSettings {
    pub fn settle(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.settle_secs.max(0.0))
    }

    pub fn limits(&self) -> ctdata_batch::Limits {
        ctdata_batch::Limits {
            max_bytes: self.max_file_bytes,
            max_gzip_ratio: self.max_gzip_ratio,
            ..ctdata_batch::Limits::default()
        }
    }
}

impl Settings {
    /// Loads defaults, then `file` (or `./ctdata.toml` when present), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Settings> {
        let defaults = config::Config::try_from(&Settings::default())?;
        let mut builder = config::Config::builder().add_source(defaults);
        match file {
            Some(path) => {
                anyhow::ensure!(path.exists(), "config file {} not found", path.display());
                builder =
                    builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
            }
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                builder = builder.add_source(config::File::with_name(DEFAULT_CONFIG_FILE));
            }
            None => {}
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("CTDATA__"))
            .collect();
        let env = config::Environment::with_prefix("CTDATA")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(env));
        let settings: Settings = builder
            .add_source(env)
            .build()?
            .try_deserialize()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(settings)
    }
}

/// Hides the password in a database URL (`postgres://user:secret@host` → `user:***@host`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("database", &self.database)
            .field("ingest.drop_dir", &self.ingest.drop_dir)
            .field("ingest.settle_secs", &self.ingest.settle_secs)
            .field("ingest.rescan_secs", &self.ingest.rescan_secs)
            .field("http.bind", &self.http.bind)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn example_config_matches_the_defaults() {
        let parsed: Settings = toml::from_str(EXAMPLE_CONFIG).unwrap();
        assert!(
            parsed == Settings::default(),
            "deploy/ctdata.toml drifted from Settings::default()"
        );
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[ingest]\nsettle_secs = 5\nrescan_secs = 7\n").unwrap();
        let s = Settings::load_from(
            Some(&file),
            env(&[
                ("CTDATA__INGEST__SETTLE_SECS", "0.5"),
                ("CTDATA__DATABASE__URL", "postgres://u:pw@localhost/x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.ingest.settle_secs, 0.5);
        assert_eq!(s.ingest.rescan_secs, 7.0);
        assert_eq!(s.http.bind, "127.0.0.1:8080");
        assert_eq!(s.database.url, "postgres://u:pw@localhost/x");
        assert!(
            !format!("{s:?}").contains("pw"),
            "password leaked into Debug output"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[ingest]\nsetle_secs = 5\n").unwrap();
        let err = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(err.to_string().contains("setle_secs"), "{err}");
    }
}
