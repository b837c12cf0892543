//! Durations on the command line: `500ms`, `30s`, `15m`, `2h`, `1d` (a bare number is
//! seconds).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{s:?} is not a duration such as 30s, 15m or 1h"))?;
        let millis = match unit {
            "ms" => 1,
            "" | "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "{s:?}: unknown unit {unit:?}; use ms, s, m, h or d"
                ))
            }
        };
        let total = n
            .checked_mul(millis)
            .ok_or_else(|| format!("{s:?} is too long"))?;
        if total == 0 {
            return Err(format!("{s:?}: a duration must be more than zero"));
        }
        Ok(Dur(Duration::from_millis(total)))
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
    }
}
