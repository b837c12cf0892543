//! Device names: the one rule for them, shared by the batch format, the server and the
//! client.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A valid device name, `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`: safe as a file and
/// folder name on every system the server and the devices run on, and as an FTP login.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceName(String);

/// A name that breaks the device-name rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid device name: {rule}", rule = DeviceName::RULE)]
pub struct InvalidDeviceName(pub String);

impl DeviceName {
    /// The rule, as told to whoever chose a name that breaks it.
    pub const RULE: &'static str =
        "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit, e.g. ranger-07";

    /// Whether `name` follows the rule.
    pub fn is_valid(name: &str) -> bool {
        let b = name.as_bytes();
        let tail_ok = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
        !b.is_empty() && b.len() <= 64 && b[0].is_ascii_alphanumeric() && b[1..].iter().all(tail_ok)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeviceName {
    type Error = InvalidDeviceName;

    fn try_from(name: String) -> Result<DeviceName, InvalidDeviceName> {
        match DeviceName::is_valid(&name) {
            true => Ok(DeviceName(name)),
            false => Err(InvalidDeviceName(name)),
        }
    }
}

impl FromStr for DeviceName {
    type Err = InvalidDeviceName;

    fn from_str(name: &str) -> Result<DeviceName, InvalidDeviceName> {
        DeviceName::try_from(name.to_string())
    }
}

impl From<DeviceName> for String {
    fn from(name: DeviceName) -> String {
        name.0
    }
}

impl AsRef<str> for DeviceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for DeviceName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for good in ["ranger-07", "A", "a.b_c-d", &"x".repeat(64)] {
            assert!(good.parse::<DeviceName>().is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "_a", "a b", "a/b", "é", &"x".repeat(65)] {
            let e = bad.parse::<DeviceName>().unwrap_err();
            assert!(
                e.to_string()
                    .contains("is not a valid device name: 1 to 64"),
                "{e}"
            );
        }
        let json: Result<DeviceName, _> = serde_json::from_str("\"../x\"");
        assert!(json.is_err());
    }
}
