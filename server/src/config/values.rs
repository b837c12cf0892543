//! Typed setting values, parsed when the settings load so a bad value stops the start
//! with the setting's name (the config loader prefixes every error with the key).

use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Durations: a number in the key's unit (`idle_timeout_secs = 30`, as older files and
/// `CTDATA__…` variables write them) or text in humantime's grammar (`"30s"`, `"5m"`,
/// `"1h 30m"`), the grammar the field client's durations use too.
fn duration<'de, D: Deserializer<'de>>(
    de: D,
    unit: f64,
    name: &'static str,
) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
    }
    let bad = |what: &str| {
        serde::de::Error::custom(format!(
            "{what} is not a duration: give a number of {name} or text such as \"30s\", \"5m\" or \"1h 30m\""
        ))
    };
    let secs = match Raw::deserialize(de)? {
        Raw::Number(n) => n * unit,
        Raw::Text(text) => match text.trim().parse::<f64>() {
            Ok(n) => n * unit,
            Err(_) => {
                return humantime::parse_duration(text.trim())
                    .map_err(|_| bad(&format!("{text:?}")))
            }
        },
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad(&secs.to_string()))
}

fn write_duration<S: Serializer>(d: &Duration, ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_str(&humantime::format_duration(*d))
}

macro_rules! duration_unit {
    ($module:ident, $unit:expr, $name:expr) => {
        pub mod $module {
            use super::*;

            pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
                duration(de, $unit, $name)
            }

            pub fn serialize<S: Serializer>(d: &Duration, ser: S) -> Result<S::Ok, S::Error> {
                write_duration(d, ser)
            }
        }
    };
}

duration_unit!(secs, 1.0, "seconds");
duration_unit!(hours, 3600.0, "hours");
duration_unit!(days, 86_400.0, "days");

/// An optional duration in seconds (`poll_every`).
pub mod opt_secs {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "secs")] Duration);
        Ok(Option::<Wrap>::deserialize(de)?.map(|w| w.0))
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, ser: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => ser.collect_str(&humantime::format_duration(*d)),
            None => ser.serialize_none(),
        }
    }
}

/// What to do with a remote file after its ingest committed: `delete`, `move:FOLDER`
/// or `keep`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AfterDownload {
    Delete,
    /// Move into this folder (relative to the source folder unless absolute).
    Move(String),
    /// Leave it; the server remembers it and fetches it again only when it changes.
    #[default]
    Keep,
}

impl TryFrom<String> for AfterDownload {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "delete" => Ok(AfterDownload::Delete),
            "keep" => Ok(AfterDownload::Keep),
            other => match other.strip_prefix("move:") {
                Some(folder) if !folder.trim_matches('/').is_empty() && !folder.split('/').any(|p| p == "..") => {
                    Ok(AfterDownload::Move(folder.to_string()))
                }
                _ => Err(format!(
                    "after_download {other:?} must be \"delete\", \"keep\" or \"move:FOLDER\" (a folder name without '..')"
                )),
            },
        }
    }
}

impl From<AfterDownload> for String {
    fn from(a: AfterDownload) -> String {
        match a {
            AfterDownload::Delete => "delete".into(),
            AfterDownload::Keep => "keep".into(),
            AfterDownload::Move(folder) => format!("move:{folder}"),
        }
    }
}

/// A licence GBIF registers data under, written as its SPDX id: `CC0-1.0`,
/// `CC-BY-4.0` or `CC-BY-NC-4.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Licence {
    Cc0,
    CcBy,
    CcByNc,
}

impl Licence {
    pub fn spdx(self) -> &'static str {
        match self {
            Licence::Cc0 => "CC0-1.0",
            Licence::CcBy => "CC-BY-4.0",
            Licence::CcByNc => "CC-BY-NC-4.0",
        }
    }

    /// The licence's legal code, as GBIF's metadata profile links it.
    pub fn url(self) -> &'static str {
        match self {
            Licence::Cc0 => "http://creativecommons.org/publicdomain/zero/1.0/legalcode",
            Licence::CcBy => "http://creativecommons.org/licenses/by/4.0/legalcode",
            Licence::CcByNc => "http://creativecommons.org/licenses/by-nc/4.0/legalcode",
        }
    }

    /// The title GBIF's metadata profile gives the licence.
    pub fn title(self) -> &'static str {
        match self {
            Licence::Cc0 => "Public Domain (CC0 1.0)",
            Licence::CcBy => "Creative Commons Attribution (CC-BY) 4.0 License",
            Licence::CcByNc => "Creative Commons Attribution Non Commercial (CC-BY-NC) 4.0 License",
        }
    }
}

impl TryFrom<String> for Licence {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let key: String = text
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_uppercase();
        match key.as_str() {
            "CC010" | "CC0" => Ok(Licence::Cc0),
            "CCBY40" => Ok(Licence::CcBy),
            "CCBYNC40" => Ok(Licence::CcByNc),
            _ => Err(format!(
                "licence {text:?} is not one GBIF registers: use \"CC0-1.0\", \"CC-BY-4.0\" or \"CC-BY-NC-4.0\""
            )),
        }
    }
}

impl From<Licence> for String {
    fn from(l: Licence) -> String {
        l.spdx().into()
    }
}

/// A Darwin Core `basisOfRecord` class name, e.g. `HumanObservation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BasisOfRecord(String);

impl BasisOfRecord {
    const CLASSES: [&'static str; 8] = [
        "HumanObservation",
        "MachineObservation",
        "Occurrence",
        "MaterialSample",
        "MaterialCitation",
        "PreservedSpecimen",
        "LivingSpecimen",
        "FossilSpecimen",
    ];

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for BasisOfRecord {
    fn default() -> Self {
        BasisOfRecord("HumanObservation".into())
    }
}

impl TryFrom<String> for BasisOfRecord {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match Self::CLASSES.iter().find(|c| c.eq_ignore_ascii_case(&text)) {
            Some(c) => Ok(BasisOfRecord(c.to_string())),
            None => Err(format!(
                "basis_of_record {text:?} must be one of {}",
                Self::CLASSES.join(", ")
            )),
        }
    }
}

impl From<BasisOfRecord> for String {
    fn from(b: BasisOfRecord) -> String {
        b.0
    }
}

/// A range of ports written `FIRST-LAST`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange(RangeInclusive<u16>);

impl PortRange {
    pub fn range(&self) -> RangeInclusive<u16> {
        self.0.clone()
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let parse = || {
            let (first, last) = text.split_once('-')?;
            let first: u16 = first.trim().parse().ok()?;
            let last: u16 = last.trim().parse().ok()?;
            (first >= 1 && first <= last).then_some(first..=last)
        };
        parse().map(PortRange).ok_or_else(|| {
            format!(
                "{text:?} is not a port range like \"50000-50100\" (two ports from 1 to 65535, \
                 the first not above the second)"
            )
        })
    }
}

impl From<PortRange> for String {
    fn from(p: PortRange) -> String {
        format!("{}-{}", p.0.start(), p.0.end())
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0.start(), self.0.end())
    }
}

/// Where a source's files are: an FTP(S) folder or a folder on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Ftp {
        /// `ftps://`: explicit TLS (AUTH TLS).
        tls: bool,
        host: String,
        port: u16,
        folder: String,
    },
    Folder(PathBuf),
}

/// A source's `url` as written, parsed at load. It may carry credentials, so it is
/// shown (`Debug`, [`redact_url`]) with the password hidden.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceUrl {
    text: String,
    place: Place,
}

impl SourceUrl {
    pub fn place(&self) -> &Place {
        &self.place
    }
}

impl AsRef<str> for SourceUrl {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.text), f)
    }
}

impl TryFrom<String> for SourceUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = |why: &str| format!("{:?} {why}", redact_url(&text));
        if text.is_empty() {
            return Err(bad(
                "must be ftp://HOST/FOLDER, ftps://HOST/FOLDER or a folder path",
            ));
        }
        if !text.contains("://") {
            let place = Place::Folder(PathBuf::from(&text));
            return Ok(SourceUrl { text, place });
        }
        let url = url::Url::parse(&text).map_err(|e| bad(&format!("is not a URL ({e})")))?;
        let place = match url.scheme() {
            "file" => Place::Folder(
                url.to_file_path()
                    .map_err(|()| bad("is not a file:///FOLDER URL"))?,
            ),
            scheme @ ("ftp" | "ftps") => {
                // The URL standard reads `ftp:///x` as host `x`; here it is a missing host.
                if text
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.starts_with('/'))
                {
                    return Err(bad("must be ftp://HOST[:PORT]/FOLDER (or ftps://…)"));
                }
                // Credentials never belong in the URL (a password file does): ignored.
                let host = match url.host() {
                    Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
                    Some(url::Host::Ipv4(a)) => a.to_string(),
                    Some(url::Host::Ipv6(a)) => a.to_string(),
                    _ => return Err(bad("must be ftp://HOST[:PORT]/FOLDER (or ftps://…)")),
                };
                let path = percent_encoding::percent_decode_str(url.path())
                    .decode_utf8()
                    .map_err(|_| bad("has a folder that is not UTF-8"))?;
                let folder = path.trim_end_matches('/');
                Place::Ftp {
                    tls: scheme == "ftps",
                    host,
                    port: url.port().unwrap_or(21),
                    folder: if folder.is_empty() { "/" } else { folder }.to_string(),
                }
            }
            _ => {
                return Err(bad(
                    "must be ftp://HOST/FOLDER, ftps://HOST/FOLDER or a folder path",
                ))
            }
        };
        Ok(SourceUrl { text, place })
    }
}

impl From<SourceUrl> for String {
    fn from(u: SourceUrl) -> String {
        u.text
    }
}

/// A setting that holds a password (a database URL): kept in a [`SecretString`], shown
/// with the password hidden.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    pub fn new(url: &str) -> SecretUrl {
        SecretUrl(url.into())
    }

    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl PartialEq for SecretUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose_secret() == other.expose_secret()
    }
}

/// Written out only to layer the defaults under the file and the environment.
impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(self.expose_secret())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(self.expose_secret()), f)
    }
}

/// Hides the password in a URL (`postgres://user:secret@host` → `user:***@host`).
/// The last `@` ends the credentials, since a password may hold `@` (or `/`) written
/// as is; a path with `@` in it is hidden too, the safe mistake.
pub fn redact_url(url: impl AsRef<str>) -> String {
    let url = url.as_ref();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct T {
        #[serde(with = "secs")]
        d: Duration,
    }

    #[test]
    fn durations_take_seconds_or_humantime_text() {
        for (text, secs) in [
            ("d = 30", 30.0),
            ("d = 0.5", 0.5),
            ("d = \"2\"", 2.0),
            ("d = \"30s\"", 30.0),
            ("d = \"5m\"", 300.0),
            ("d = \"1h 30m\"", 5400.0),
            ("d = \"250ms\"", 0.25),
        ] {
            let t: T = toml::from_str(text).unwrap();
            assert_eq!(t.d, Duration::from_secs_f64(secs), "{text}");
            let again: T = toml::from_str(&toml::to_string(&t).unwrap()).unwrap();
            assert_eq!(again, t);
        }
        for bad in ["d = \"soon\"", "d = -1", "d = \"5 parsecs\""] {
            let e = toml::from_str::<T>(bad).unwrap_err().to_string();
            assert!(e.contains("not a duration"), "{e}");
        }
    }

    #[test]
    fn source_urls_parse_to_places() {
        let place = |s: &str| SourceUrl::try_from(s.to_string()).map(|u| u.place().clone());
        assert_eq!(
            place("ftps://cam:p@ss@[::1]:2121/Camera%20Traps/").unwrap(),
            Place::Ftp {
                tls: true,
                host: "::1".into(),
                port: 2121,
                folder: "/Camera Traps".into()
            }
        );
        assert_eq!(
            place("ftp://host").unwrap(),
            Place::Ftp {
                tls: false,
                host: "host".into(),
                port: 21,
                folder: "/".into()
            }
        );
        assert_eq!(
            place("/srv/CTData").unwrap(),
            Place::Folder("/srv/CTData".into())
        );
        assert_eq!(
            place("file:///srv/x").unwrap(),
            Place::Folder("/srv/x".into())
        );
        for bad in [
            "",
            "http://host/x",
            "sftp://host/x",
            "ftp:///x",
            "ftp://host:99999/x",
            "ftp://host:port/x",
            "ftp://[::1/x",
        ] {
            assert!(place(bad).is_err(), "{bad}");
        }
        let e = place("sftp://u:hunter2@h/x").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
