//! `config.toml`: where to send (upload) and where to download from, written by `init`.

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Context};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::home::{write_atomic_private, Home};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP API of ctdata-server (http:// or https:// URL)
    Https,
    /// An FTP site or ctdata-server's FTP service (ftp:// URL)
    Ftp,
    /// FTP with TLS (explicit, AUTH TLS; ftps:// URL)
    Ftps,
    /// A mounted CTData drop folder (a local path)
    Share,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Https => "https",
            Protocol::Ftp => "ftp",
            Protocol::Ftps => "ftps",
            Protocol::Share => "share",
        })
    }
}

/// A device token or FTP password: held in a [`SecretString`], so `Debug` and logs
/// never show it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Token(SecretString);

impl Token {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for Token {
    fn from(s: String) -> Token {
        Token(s.into())
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        self.expose() == other.expose()
    }
}

/// Written only into `config.toml` (readable by its owner alone) by `init`.
impl Serialize for Token {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(self.expose())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

/// One side of the connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub protocol: Protocol,
    pub url: String,
    /// FTP login name (default: the device name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Device token (https), or FTP password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Token>,
    /// A file holding the token, read at each use (so it can be rotated in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Extra trusted certificate (PEM), for a server with a self-signed certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Endpoint {
    /// The token to present, from `token` or `token_file`.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.expose().to_string()));
        }
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read token_file {}", path.display()))?;
        Ok(Some(text.trim().to_string()))
    }

    /// The token, or a message saying how to configure one.
    pub fn require_token(&self) -> anyhow::Result<String> {
        self.token()?.ok_or_else(|| {
            anyhow::anyhow!(
                "no token configured for {}: run `ctdata init --token TOKEN`",
                self.url
            )
        })
    }

    /// The share folder (`share` URLs are paths, `file://` accepted).
    pub fn share_root(&self) -> PathBuf {
        PathBuf::from(self.url.strip_prefix("file://").unwrap_or(&self.url))
    }

    pub fn validate(&self, side: &str) -> anyhow::Result<()> {
        match self.protocol {
            Protocol::Https => {
                if !(self.url.starts_with("https://") || self.url.starts_with("http://")) {
                    bail!(
                        "{side} url {:?} is not an https:// URL, e.g. https://ctdata.example.org:8443",
                        self.url
                    );
                }
                if self.token.is_none() && self.token_file.is_none() {
                    bail!("{side}: https needs a token (--token or --token-file)");
                }
            }
            Protocol::Ftp | Protocol::Ftps => {
                let scheme = format!("{}://", self.protocol);
                if !self.url.starts_with(&scheme) {
                    bail!(
                        "{side} url {:?} is not an {scheme} URL, e.g. {scheme}ctdata.example.org:2121/",
                        self.url
                    );
                }
            }
            Protocol::Share => {
                if self.url.contains("://") && !self.url.starts_with("file://") {
                    bail!(
                        "{side} url {:?} is not a folder: a share is a path such as /mnt/share/CTData",
                        self.url
                    );
                }
            }
        }
        Ok(())
    }

    /// Base URL without a trailing slash, for joining API paths.
    pub fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This device's name on the server (the name given to `ctdata-server device add`).
    pub device: String,
    pub upload: Endpoint,
    /// Where `pull` downloads from; absent means "same as upload".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<Endpoint>,
    /// Delivered batches stay in `sent/` this many days, then `send` deletes them.
    #[serde(default = "default_keep_sent_days")]
    pub keep_sent_days: u64,
}

fn default_keep_sent_days() -> u64 {
    90
}

impl Config {
    pub fn load(home: &Home) -> anyhow::Result<Config> {
        let path = home.config_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{} does not exist: run `ctdata init` first (or pass --home DIR)",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let config: Config =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if let Err(e) = self.device.parse::<ctdata_batch::DeviceName>() {
            bail!("device {e}");
        }
        self.upload.validate("upload")?;
        if let Some(d) = &self.download {
            d.validate("download")?;
        }
        Ok(())
    }

    pub fn download(&self) -> &Endpoint {
        self.download.as_ref().unwrap_or(&self.upload)
    }

    /// Written readable by the owner only: it may hold a token.
    pub fn save(&self, home: &Home) -> anyhow::Result<()> {
        let text = format!(
            "# CTData client settings, written by `ctdata init`.\n{}",
            toml::to_string_pretty(self)?
        );
        let path = home.config_path();
        write_atomic_private(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}
