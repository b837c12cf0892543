//! Settings in layers: built-in defaults, then a TOML file, then `CTDATA__SECTION__KEY`
//! environment variables last.

mod openrosa;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use openrosa::{FormMapping, OpenRosaSettings, StorageSettings};
use values::{days, hours, opt_secs, secs};
pub use values::{
    redact_url, AfterDownload, BasisOfRecord, Licence, Place, PortRange, SecretUrl, SourceUrl,
};

/// The commented example printed by `ctdata-server default-config` and shipped as
/// `deploy/ctdata.toml`. A test keeps it equal to [`Settings::default`].
pub const EXAMPLE_CONFIG: &str = include_str!("../../../deploy/ctdata.toml");

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "ctdata.toml";

#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub ingest: IngestSettings,
    pub http: HttpSettings,
    pub ftp: FtpSettings,
    /// The Darwin Core Archive export (`--format dwca`), for publishing to GBIF.
    pub dwca: DwcaSettings,
    /// Per-format reading settings.
    pub formats: FormatSettings,
    /// This server as one of several (replicas) on one PostgreSQL database.
    pub replica: ReplicaSettings,
    /// Remote folders pulled into the drop directory (FTP, FTPS or a mounted share).
    /// Configured in the file only: environment variables cannot add or change sources.
    pub sources: Vec<SourceSettings>,
    /// The attachment store (photos, audio, signatures).
    pub storage: StorageSettings,
    /// ODK Collect, KoboCollect and the CyberTracker app over OpenRosa.
    pub openrosa: OpenRosaSettings,
}

/// One remote folder devices upload to, pulled on a schedule or by the admin Download.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    /// Names the source in reports, the CLI (`download --source`) and the database.
    pub name: String,
    /// `ftp://HOST[:PORT]/FOLDER`, `ftps://…` (explicit TLS), or a folder path.
    pub url: SourceUrl,
    /// FTP user; `anonymous` when unset.
    #[serde(default)]
    pub user: Option<String>,
    /// File holding the FTP password (first line); the password is never in this file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Pull on this schedule while `serve` runs: `90s`, `10m`, `1h`. Unset: only on Download.
    #[serde(default, with = "opt_secs")]
    pub poll_every: Option<Duration>,
    /// What happens to a remote file once its batch is stored (or filed away as
    /// rejected): `delete`, `move:FOLDER` (relative to the source folder), or `keep`.
    #[serde(default)]
    pub after_download: AfterDownload,
    /// Longest wait for any one step (connect, login, a command, a transfer stall).
    #[serde(default = "default_source_timeout", with = "secs")]
    pub timeout_secs: Duration,
    /// PEM certificates to trust for `ftps://` besides the public roots (a private CA
    /// or a self-signed server certificate).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

fn default_source_timeout() -> Duration {
    Duration::from_secs(30)
}

/// How some batch formats are read.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FormatSettings {
    /// CyberTracker Classic and SMART Mobile uploads: sighting elements that fill
    /// species, count and observer.
    pub cybertracker: crate::cybertracker::CybertrackerSettings,
}

/// The Darwin Core Archive export. The metadata settings (title to licence) are
/// required by the export, which names the first one missing; the server starts
/// without them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DwcaSettings {
    /// The dataset's title, as GBIF shows it.
    pub title: Option<String>,
    /// What the dataset holds and how it was collected (the EML abstract).
    pub description: Option<String>,
    /// The organisation that publishes the dataset (registered with GBIF).
    pub publishing_organisation: Option<String>,
    /// Who made the dataset: `Name <email>` or `Name`.
    pub creator: Option<String>,
    /// Who answers questions about the dataset: `Name <email>` or `Name`.
    pub contact: Option<String>,
    /// Who wrote the metadata: `Name <email>` or `Name`.
    pub metadata_provider: Option<String>,
    /// `CC0-1.0`, `CC-BY-4.0` or `CC-BY-NC-4.0`: the licences GBIF registers.
    pub licence: Option<Licence>,
    /// ISO 3166-1 alpha-2 code of the country the sightings are in (`countryCode`).
    pub country_code: Option<String>,
    /// The place the sightings are in (`locality`), e.g. a park's name.
    pub locality: Option<String>,
    /// `basisOfRecord` of every row, unless its device is listed in `basis_of_record_by_device`.
    pub basis_of_record: BasisOfRecord,
    /// `basisOfRecord` for the rows of these devices, e.g. `MachineObservation` for camera traps.
    pub basis_of_record_by_device: std::collections::BTreeMap<String, BasisOfRecord>,
    /// `recordedBy` holds a stable pseudonym per observer instead of the name.
    pub pseudonymise_observers: bool,
    /// The key of the observer pseudonyms (a keyed hash): keep it secret and unchanged,
    /// or the pseudonyms change. Required with `pseudonymise_observers`.
    pub pseudonym_key: Option<String>,
    /// Export rows without a species (with an empty `scientificName`); otherwise they
    /// are left out and counted.
    pub allow_unnamed: bool,
    /// Grid cell size in degrees for sensitive species that do not name their own.
    pub sensitive_grid_degrees: f64,
    /// Species whose exact positions never leave the server through this export.
    pub sensitive: Vec<SensitiveSpecies>,
    /// CSV file mapping the species field (a local name or code) to `scientificName`,
    /// `vernacularName`, `kingdom` and `taxonRank` (see the README).
    pub species_file: Option<PathBuf>,
}

/// A species whose positions are generalised to a grid, or left out.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SensitiveSpecies {
    /// The scientific name (after the species mapping), or the local name.
    pub name: String,
    /// This species' grid cell size in degrees; `sensitive_grid_degrees` when unset.
    #[serde(default)]
    pub grid_degrees: Option<f64>,
    /// Leave this species out of the archive altogether.
    #[serde(default)]
    pub exclude: bool,
}

impl Default for DwcaSettings {
    fn default() -> Self {
        DwcaSettings {
            title: None,
            description: None,
            publishing_organisation: None,
            creator: None,
            contact: None,
            metadata_provider: None,
            licence: None,
            country_code: None,
            locality: None,
            basis_of_record: BasisOfRecord::default(),
            basis_of_record_by_device: Default::default(),
            pseudonymise_observers: false,
            pseudonym_key: None,
            allow_unnamed: false,
            sensitive_grid_degrees: 0.1,
            sensitive: Vec::new(),
            species_file: None,
        }
    }
}

/// Several servers on one PostgreSQL database: each holds a lease renewed by its
/// heartbeat; a replica's claimed files are taken over by the others once it runs out.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicaSettings {
    /// Names this server among the replicas (letters, digits, `_`); empty: the host name.
    pub name: String,
    /// How long a replica's claims stay its own after its last heartbeat.
    #[serde(with = "secs")]
    pub lease_secs: Duration,
    /// How often the lease is renewed.
    #[serde(with = "secs")]
    pub heartbeat_secs: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        ReplicaSettings {
            name: String::new(),
            lease_secs: Duration::from_secs(30),
            heartbeat_secs: Duration::from_secs(10),
        }
    }
}

impl ReplicaSettings {
    /// The configured name, or the host's.
    pub fn name(&self) -> String {
        match self.name.is_empty() {
            true => crate::replica::default_name(),
            false => self.name.clone(),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !self.name.is_empty() {
            crate::replica::check_name(&self.name).map_err(anyhow::Error::msg)?;
        }
        anyhow::ensure!(
            self.heartbeat_secs >= Duration::from_millis(100)
                && self.heartbeat_secs.mul_f64(2.0) <= self.lease_secs,
            "replica.heartbeat_secs ({}) must be at least 0.1s and at most half of replica.lease_secs ({})",
            humantime::format_duration(self.heartbeat_secs),
            humantime::format_duration(self.lease_secs)
        );
        Ok(())
    }
}

impl DwcaSettings {
    fn validate(&self) -> anyhow::Result<()> {
        if let Some(cc) = &self.country_code {
            anyhow::ensure!(
                cc.len() == 2 && cc.bytes().all(|b| b.is_ascii_uppercase()),
                "dwca.country_code {cc:?} must be an ISO 3166-1 alpha-2 code in capitals, e.g. \"KE\""
            );
        }
        let grid_ok = |g: f64| g.is_finite() && g > 0.0 && g <= 10.0;
        anyhow::ensure!(
            grid_ok(self.sensitive_grid_degrees),
            "dwca.sensitive_grid_degrees {} must be more than 0 and at most 10",
            self.sensitive_grid_degrees
        );
        for s in &self.sensitive {
            anyhow::ensure!(
                !s.name.trim().is_empty(),
                "dwca.sensitive: a species without a name"
            );
            if let Some(g) = s.grid_degrees {
                anyhow::ensure!(
                    grid_ok(g),
                    "dwca.sensitive {:?}: grid_degrees {g} must be more than 0 and at most 10",
                    s.name
                );
            }
        }
        anyhow::ensure!(
            !self.pseudonymise_observers
                || self.pseudonym_key.as_deref().is_some_and(|k| k.len() >= 16),
            "dwca.pseudonymise_observers needs dwca.pseudonym_key: a secret of at least 16 characters"
        );
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` (created when missing) or `postgres://USER:PASSWORD@HOST/DB`.
    pub url: SecretUrl,
    pub max_connections: u32,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// The `CTData` folder devices deliver into.
    pub drop_dir: PathBuf,
    /// A file written in place is taken once its size and mtime were unchanged this long.
    #[serde(with = "secs")]
    pub settle_secs: Duration,
    /// Full rescan of the drop directory even when no change was notified.
    #[serde(with = "secs")]
    pub rescan_secs: Duration,
    /// Device name for files that name none (CSV / GeoJSON at the top of the drop dir).
    pub default_device: String,
    /// Largest decompressed batch accepted, in bytes.
    pub max_file_bytes: u64,
    /// Largest gzip expansion ratio accepted (gzip bomb guard).
    pub max_gzip_ratio: u64,
    /// A file written in place that is cut short (truncated, or cut inside a row or a
    /// JSON document) while it changed within this many seconds is left in place and
    /// looked at again when it changes; only after this long unchanged is it rejected.
    #[serde(with = "secs")]
    pub incomplete_grace_secs: Duration,
    /// CyberTracker Classic `.CTX` files record the device's wall clock without a time
    /// zone: their times are read at this UTC offset, in minutes (120 for UTC+02:00).
    pub ctx_utc_offset_minutes: i32,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub bind: String,
    /// A client must send its request headers within this time (slowloris guard).
    #[serde(with = "secs")]
    pub header_read_timeout_secs: Duration,
    /// Largest request body accepted, in bytes, as sent (compressed or not).
    pub max_body_bytes: u64,
    /// A request body that sends nothing for this long is abandoned (408).
    #[serde(with = "secs")]
    pub body_idle_timeout_secs: Duration,
    /// Requests handled at once, uploads and all others each; more wait their turn.
    pub max_concurrent_requests: usize,
    /// PEM certificate chain (server certificate first). With `tls_key`, `bind` speaks
    /// HTTPS instead of HTTP; set both or neither.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A dashboard sign-in lasts this many hours.
    #[serde(with = "hours")]
    pub session_hours: Duration,
    /// The dashboard calls a device stale after this many days without a batch.
    #[serde(with = "days")]
    pub stale_after_days: Duration,
    /// Map tiles under the dashboard's sightings map: a URL template with `{z}`, `{x}`
    /// and `{y}` (256-pixel Web Mercator tiles, e.g. a tile server on the station's
    /// network). Unset: a plain lon/lat map that needs no network.
    pub map_tile_url: Option<String>,
    /// Shown under the map when tiles are drawn (most tile sources require it).
    pub map_tile_attribution: Option<String>,
    /// Devices whose token may also download the consolidated sightings
    /// (`GET /api/v1/sightings`, the field client's `pull`). Empty: administrators only.
    pub read_devices: Vec<String>,
    /// Reverse proxies (IP addresses) whose `Forwarded` / `X-Forwarded-For` names the
    /// client, for counting failed logins per client. Empty: the peer is the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Open connections at once; more are refused as they arrive.
    pub max_connections: usize,
    /// Open connections from one address at once.
    pub max_connections_per_ip: usize,
    /// A connection with no request in progress (before its first byte, or between
    /// requests, HTTP/1 keep-alive or HTTP/2) is closed after this long.
    #[serde(with = "secs")]
    pub idle_timeout_secs: Duration,
    /// A request body slower than this on average (after a 10 s start) is abandoned (408).
    pub min_body_bytes_per_sec: u64,
    /// Uploads one device sends at once; more wait their turn, so one device cannot
    /// take every upload slot.
    pub max_uploads_per_device: usize,
    /// Disk one device may hold in unfinished uploads (spooled bodies and resumable
    /// uploads); an upload that would pass it is refused with 507.
    pub max_spool_bytes_per_device: u64,
    /// A resumable upload (`/api/v1/uploads`) not finished within this time is deleted.
    #[serde(with = "secs")]
    pub upload_expiry_secs: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FtpSettings {
    /// Also serve FTP (and FTPS when `tls_cert`/`tls_key` are set) from `serve`.
    pub enabled: bool,
    pub bind: String,
    /// Passive data ports, `FIRST-LAST`.
    pub passive_ports: PortRange,
    /// The address passive replies (227) announce: an IPv4 address or a DNS name. Empty:
    /// the address the client connected to, which is wrong behind a load balancer or
    /// NAT (clients would be sent to the replica's own address).
    pub passive_host: String,
    /// PEM certificate chain for explicit FTPS (AUTH TLS); with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Refuse logins (and transfers) that are not protected by TLS.
    pub require_tls: bool,
    /// A control connection with no command for this long is closed.
    #[serde(with = "secs")]
    pub idle_timeout_secs: Duration,
    /// An upload that sends no byte for this long is abandoned.
    #[serde(with = "secs")]
    pub data_timeout_secs: Duration,
    /// Failed logins from one address for one name before the lockout.
    pub max_login_failures: u32,
    /// How long a locked-out name and address stays refused.
    #[serde(with = "secs")]
    pub lockout_secs: Duration,
    /// Unfinished uploads (temporary names: `.part`, `.tmp`, `~`, dotfiles…)
    /// untouched for this long are deleted.
    #[serde(with = "secs")]
    pub stale_part_secs: Duration,
    /// Fsync each upload before answering the client, not only before ingesting it.
    pub fsync_before_reply: bool,
    /// Largest single upload; a bigger one is cut off with 552 and removed.
    pub max_file_bytes: u64,
    /// Most bytes a device's folder may hold (unfinished uploads included).
    pub device_quota_bytes: u64,
    /// Open control connections at once; more are refused with 421.
    pub max_connections: usize,
    /// Open control connections from one address at once.
    pub max_connections_per_ip: usize,
    /// A control connection not logged in this long after it opened is closed.
    #[serde(with = "secs")]
    pub login_timeout_secs: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: SecretUrl::new("sqlite://./ctdata-data/ctdata.db"),
            max_connections: 8,
        }
    }
}

impl Default for IngestSettings {
    fn default() -> Self {
        let limits = ctdata_batch::Limits::default();
        IngestSettings {
            drop_dir: PathBuf::from("./ctdata-data/CTData"),
            settle_secs: Duration::from_secs(2),
            rescan_secs: Duration::from_secs(30),
            default_device: "unassigned".into(),
            max_file_bytes: limits.max_bytes,
            max_gzip_ratio: limits.max_gzip_ratio,
            incomplete_grace_secs: Duration::from_secs(300),
            ctx_utc_offset_minutes: 0,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            bind: "127.0.0.1:8080".into(),
            header_read_timeout_secs: Duration::from_secs(10),
            max_body_bytes: 1 << 30,
            body_idle_timeout_secs: Duration::from_secs(60),
            max_concurrent_requests: 256,
            tls_cert: None,
            tls_key: None,
            read_devices: Vec::new(),
            session_hours: Duration::from_secs(12 * 3600),
            stale_after_days: Duration::from_secs(3 * 86_400),
            map_tile_url: None,
            map_tile_attribution: None,
            trusted_proxies: Vec::new(),
            max_connections: 2048,
            max_connections_per_ip: 256,
            idle_timeout_secs: Duration::from_secs(30),
            min_body_bytes_per_sec: 1024,
            max_uploads_per_device: 4,
            max_spool_bytes_per_device: 2 << 30,
            upload_expiry_secs: Duration::from_secs(24 * 3600),
        }
    }
}

impl Default for FtpSettings {
    fn default() -> Self {
        FtpSettings {
            enabled: false,
            bind: "127.0.0.1:2121".into(),
            passive_ports: PortRange::try_from("50000-50100".to_string()).expect("a valid range"),
            passive_host: String::new(),
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            idle_timeout_secs: Duration::from_secs(600),
            data_timeout_secs: Duration::from_secs(60),
            max_login_failures: 5,
            lockout_secs: Duration::from_secs(300),
            stale_part_secs: Duration::from_secs(86_400),
            fsync_before_reply: false,
            max_file_bytes: 1 << 30,
            device_quota_bytes: 10 << 30,
            max_connections: 256,
            max_connections_per_ip: 32,
            login_timeout_secs: Duration::from_secs(30),
        }
    }
}

impl IngestSettings {
    pub fn limits(&self) -> ctdata_batch::Limits {
        ctdata_batch::Limits {
            max_bytes: self.max_file_bytes,
            max_gzip_ratio: self.max_gzip_ratio,
            ctx_utc_offset_minutes: self.ctx_utc_offset_minutes,
            ..ctdata_batch::Limits::default()
        }
    }
}

impl SourceSettings {
    /// The step timeout, kept between 0.1 s and an hour.
    pub fn timeout(&self) -> Duration {
        self.timeout_secs
            .clamp(Duration::from_millis(100), Duration::from_secs(3600))
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            ctdata_batch::DeviceName::is_valid(&self.name),
            "source name {:?} must be {}",
            self.name,
            ctdata_batch::DeviceName::RULE
        );
        if let Some(every) = self.poll_every {
            anyhow::ensure!(
                every >= Duration::from_secs(1),
                "source {:?}: poll_every {} must be at least 1s",
                self.name,
                humantime::format_duration(every)
            );
        }
        Ok(())
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
        let mut names = std::collections::HashSet::new();
        for source in &settings.sources {
            source.validate()?;
            anyhow::ensure!(
                names.insert(source.name.as_str()),
                "two sources are named {:?}: names must differ",
                source.name
            );
        }
        settings.dwca.validate()?;
        let offset = settings.ingest.ctx_utc_offset_minutes;
        anyhow::ensure!(
            (-720..=840).contains(&offset),
            "ingest.ctx_utc_offset_minutes {offset} must be from -720 (UTC-12:00) to 840 (UTC+14:00)"
        );
        settings.replica.validate()?;
        if let Some(url) = &settings.http.map_tile_url {
            anyhow::ensure!(
                (url.starts_with("http://") || url.starts_with("https://"))
                    && ["{z}", "{x}", "{y}"].iter().all(|p| url.contains(p)),
                "http.map_tile_url {url:?} must be an http:// or https:// URL with {{z}}, {{x}} and {{y}} in it, \
                 e.g. \"https://tiles.example.org/{{z}}/{{x}}/{{y}}.png\""
            );
        }
        Ok(settings)
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
            .field("ftp", &self.ftp)
            .field("sources", &self.sources)
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
        assert_eq!(s.ingest.settle_secs, Duration::from_millis(500));
        assert_eq!(s.ingest.rescan_secs, Duration::from_secs(7));
        assert_eq!(s.http.bind, "127.0.0.1:8080");
        assert_eq!(
            s.database.url.expose_secret(),
            "postgres://u:pw@localhost/x"
        );
        assert!(
            !format!("{s:?}").contains("pw"),
            "password leaked into Debug output"
        );
    }

    #[test]
    fn sources_are_read_checked_and_keep_their_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let source =
            "[[sources]]\nname = \"field\"\nurl = \"ftp://bob:pw@ftp.example.org/CTData\"\n\
                      user = \"bob\"\npassword_file = \"/etc/p\"\npoll_every = \"10m\"\n\
                      after_download = \"move:processed\"\n";
        std::fs::write(&file, source).unwrap();
        let s = Settings::load_from(Some(&file), env(&[])).unwrap();
        assert_eq!(s.sources.len(), 1);
        let src = &s.sources[0];
        assert_eq!(src.after_download, AfterDownload::Move("processed".into()));
        assert_eq!(src.poll_every, Some(Duration::from_secs(600)));
        assert!(
            !format!("{s:?}").contains("pw@"),
            "password leaked into Debug output"
        );

        for (bad, why) in [
            ("after_download = \"shred\"", "after_download"),
            ("after_download = \"move:../x\"", "after_download"),
            ("poll_every = \"soon\"", "poll_every"),
            ("poll_every = \"500ms\"", "poll_every"),
            ("timeout_secs = \"a while\"", "timeout_secs"),
            ("pasword_file = \"/p\"", "pasword_file"),
        ] {
            let text = format!("[[sources]]\nname = \"a\"\nurl = \"/srv/CTData\"\n{bad}\n");
            std::fs::write(&file, text).unwrap();
            let err = Settings::load_from(Some(&file), env(&[])).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{err:#}");
        }
        let twice =
            "[[sources]]\nname = \"a\"\nurl = \"/x\"\n[[sources]]\nname = \"a\"\nurl = \"/y\"\n";
        std::fs::write(&file, twice).unwrap();
        let err = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(err.to_string().contains("two sources"), "{err}");

        for bad in ["sftp://u:pw@host/x", "ftp:///x", "ftp://host:99999/x"] {
            let text = format!("[[sources]]\nname = \"a\"\nurl = \"{bad}\"\n");
            std::fs::write(&file, text).unwrap();
            let err = format!(
                "{:#}",
                Settings::load_from(Some(&file), env(&[])).unwrap_err()
            );
            assert!(err.contains("url") && !err.contains("pw@"), "{err}");
        }
    }

    #[test]
    fn durations_read_as_seconds_or_text_from_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[http]\nidle_timeout_secs = 45\nsession_hours = \"1h 30m\"\n[ftp]\nlockout_secs = \"5m\"\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&file),
            env(&[
                ("CTDATA__FTP__IDLE_TIMEOUT_SECS", "90"),
                ("CTDATA__HTTP__HEADER_READ_TIMEOUT_SECS", "2m"),
                ("CTDATA__INGEST__SETTLE_SECS", "0.3"),
            ]),
        )
        .unwrap();
        assert_eq!(s.http.idle_timeout_secs, Duration::from_secs(45));
        assert_eq!(s.http.session_hours, Duration::from_secs(5400));
        assert_eq!(s.ftp.lockout_secs, Duration::from_secs(300));
        assert_eq!(s.ftp.idle_timeout_secs, Duration::from_secs(90));
        assert_eq!(s.http.header_read_timeout_secs, Duration::from_secs(120));
        assert_eq!(s.ingest.settle_secs, Duration::from_millis(300));
        let err =
            Settings::load_from(None, env(&[("CTDATA__HTTP__SESSION_HOURS", "soon")])).unwrap_err();
        assert!(format!("{err:#}").contains("http.session_hours"), "{err:#}");
    }

    #[test]
    fn ftp_passive_ports_parse_or_say_why() {
        assert_eq!(FtpSettings::default().passive_ports.range(), 50000..=50100);
        for bad in ["50100-50000", "50000", "0-10", "a-b", "1-70000"] {
            let e =
                Settings::load_from(None, env(&[("CTDATA__FTP__PASSIVE_PORTS", bad)])).unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains("ftp.passive_ports") && e.contains(bad), "{e}");
        }
        let s = Settings::load_from(None, env(&[("CTDATA__FTP__ENABLED", "true")])).unwrap();
        assert!(s.ftp.enabled);
    }

    #[test]
    fn redacted_urls_show_no_part_of_the_password() {
        for (url, shown) in [
            ("postgres://u:secret@db/x", "postgres://u:***@db/x"),
            (
                "ftp://cam:p@ss@w0rd@ftp.example.org/CTData",
                "ftp://cam:***@ftp.example.org/CTData",
            ),
            ("ftp://cam:a/b@host/dir", "ftp://cam:***@host/dir"),
            ("ftp://anon@host/dir", "ftp://anon@host/dir"),
            ("/srv/CTData", "/srv/CTData"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn dwca_values_parse_at_load_or_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[dwca]\nlicence = \"cc-by-nc-4.0\"\nbasis_of_record = \"machineobservation\"\n\
             [[dwca.sensitive]]\nname = \"Diceros bicornis\"\ngrid_degrees = 0.5\n\
             [dwca.basis_of_record_by_device]\ncamtrap-01 = \"MachineObservation\"\n",
        )
        .unwrap();
        let s = Settings::load_from(Some(&file), env(&[])).unwrap();
        assert_eq!(s.dwca.licence, Some(Licence::CcByNc));
        assert_eq!(s.dwca.basis_of_record.as_str(), "MachineObservation");
        assert_eq!(s.dwca.sensitive[0].grid_degrees, Some(0.5));
        assert_eq!(
            s.dwca.basis_of_record_by_device["camtrap-01"].as_str(),
            "MachineObservation"
        );
        let s = Settings::load_from(None, env(&[("CTDATA__DWCA__LICENCE", "CC0-1.0")])).unwrap();
        assert_eq!(s.dwca.licence, Some(Licence::Cc0));

        for (key, value, why) in [
            ("CTDATA__DWCA__LICENCE", "CC-BY-SA-4.0", "dwca.licence"),
            (
                "CTDATA__DWCA__BASIS_OF_RECORD",
                "Sighting",
                "dwca.basis_of_record",
            ),
            ("CTDATA__DWCA__COUNTRY_CODE", "Kenya", "dwca.country_code"),
            (
                "CTDATA__DWCA__SENSITIVE_GRID_DEGREES",
                "0",
                "dwca.sensitive_grid_degrees",
            ),
            (
                "CTDATA__DWCA__PSEUDONYMISE_OBSERVERS",
                "true",
                "dwca.pseudonym_key",
            ),
        ] {
            let e = Settings::load_from(None, env(&[(key, value)])).unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains(why), "{key}={value}: {e}");
        }
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
