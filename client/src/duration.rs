//! Durations on the command line, in the grammar the server's settings use too
//! (humantime): `500ms`, `30s`, `15m`, `1h 30m`, `1d`; a bare number is seconds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let d = match s.parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => humantime::parse_duration(s)
                .map_err(|e| format!("{s:?} is not a duration such as 30s, 15m or 1h 30m ({e})"))?,
        };
        if d.is_zero() {
            return Err(format!("{s:?}: a duration must be more than zero"));
        }
        Ok(Dur(d))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_nonsense() {
        assert_eq!("15m".parse(), Ok(Dur(Duration::from_secs(900))));
        assert_eq!("250ms".parse(), Ok(Dur(Duration::from_millis(250))));
        assert_eq!("7".parse(), Ok(Dur(Duration::from_secs(7))));
        assert!("0s".parse::<Dur>().is_err());
        assert!("5 parsecs".parse::<Dur>().is_err());
        assert!("m".parse::<Dur>().is_err());
        assert_eq!("1h 30m".parse(), Ok(Dur(Duration::from_secs(5400))));
    }
}
