//! Value formats shared by every Knit configuration surface, following Linkerd's proxy
//! (`<n>ms|s|m|h|d` durations, comma-separated ports and `a-b` ranges) so that values can be
//! copied between the two.

use std::{collections::BTreeSet, time::Duration};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("expected a duration such as 100ms, 10s, 2m, 1h or 1d; found {0:?}")]
    Duration(String),
    #[error("expected a port (1-65535) or a range a-b; found {0:?}")]
    Port(String),
    #[error("expected true or false; found {0:?}")]
    Bool(String),
}

/// Parses `0` or `<digits><unit>` with unit `ms`, `s`, `m`, `h` or `d`. Fractions are rejected,
/// as in Linkerd, so a value means the same thing to both proxies.
pub fn duration(s: &str) -> Result<Duration, ParseError> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let err = || ParseError::Duration(s.to_string());
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    };
    ms.map(Duration::from_millis).ok_or_else(err)
}

/// Formats a duration in the largest unit that represents it exactly, so that `duration(&format_duration(d)) == d`
/// for whole milliseconds.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms != 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Parses a comma-separated list of ports and `a-b` ranges. An empty string is the empty set.
pub fn port_set(s: &str) -> Result<BTreeSet<u16>, ParseError> {
    let mut ports = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(ParseError::Port(part.to_string())),
            Ok(n) => Ok(n),
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(ParseError::Port(part.to_string()));
                }
                ports.extend(a..=b);
            }
            None => {
                ports.insert(port(part)?);
            }
        }
    }
    Ok(ports)
}

pub fn boolean(s: &str) -> Result<bool, ParseError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(ParseError::Bool(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("150ms"), Ok(Duration::from_millis(150)));
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "10", "1.5s", "s", "-1s", "10 s", "10sec", "99999999999999999999d"] {
            assert!(duration(bad).is_err(), "{bad:?} should be rejected");
        }
        for d in [Duration::ZERO, Duration::from_millis(1500), Duration::from_secs(7200)] {
            assert_eq!(duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn ports() {
        assert_eq!(port_set("").unwrap().len(), 0);
        assert_eq!(port_set("25, 587,3306-3308").unwrap().into_iter().collect::<Vec<_>>(), vec![25, 587, 3306, 3307, 3308]);
        for bad in ["0", "65536", "a", "5-3", "1-", "-"] {
            assert!(port_set(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn booleans() {
        assert_eq!(boolean("TRUE"), Ok(true));
        assert_eq!(boolean("off"), Ok(false));
        assert!(boolean("maybe").is_err());
    }
}
