//! `engine.port_range`: the ports the broker may listen on, `"a-b"`.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// An inclusive range of ports, none of them 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PortRange {
    /// The lowest port, at least 1.
    pub first: u16,
    /// The highest port, at least `first`.
    pub last: u16,
}

impl FromStr for PortRange {
    type Err = String;

    /// Parses `"a-b"` (spaces around either number allowed).
    fn from_str(range: &str) -> Result<Self, String> {
        let bad = || format!("engine.port_range = \"{range}\" is not of the form \"55000-55100\"");
        let (a, b) = range.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(range: String) -> Result<Self, String> {
        range.parse()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_print() {
        let r: PortRange = "55000-55100".parse().unwrap();
        assert_eq!(
            r,
            PortRange {
                first: 55000,
                last: 55100
            }
        );
        assert_eq!(r.to_string(), "55000-55100");
        assert_eq!(" 7 - 7 ".parse(), Ok(PortRange { first: 7, last: 7 }));
    }

    #[test]
    fn bad_ranges_are_quoted_in_the_error() {
        for bad in ["9-1", "0-10", "55000", "a-b", "1-65536", "-", "", "1-2-3"] {
            let err = bad.parse::<PortRange>().unwrap_err();
            assert_eq!(
                err,
                format!("engine.port_range = \"{bad}\" is not of the form \"55000-55100\"")
            );
        }
    }

    #[derive(Debug, Deserialize)]
    struct Engine {
        port_range: Option<PortRange>,
    }

    #[test]
    fn a_bad_range_in_a_file_is_named_with_its_line() {
        assert_eq!(toml::from_str::<Engine>("").unwrap().port_range, None);
        let engine: Engine = toml::from_str("port_range = \"5-6\"\n").unwrap();
        assert_eq!(engine.port_range, Some(PortRange { first: 5, last: 6 }));
        let err = toml::from_str::<Engine>("\nport_range = \"9-1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("engine.port_range = \"9-1\" is not of the form")
                && err.contains("line 2"),
            "{err}"
        );
        assert!(toml::from_str::<Engine>("port_range = 55000\n").is_err());
    }
}
