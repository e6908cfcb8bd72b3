//! Human-friendly units used in the config file: durations (`"250ms"`, `"5s"`,
//! `"2m"`, `"1h"`, `"7d"`, at most 365 days) and byte sizes (`"16KiB"`, `"64MiB"`, `"1GiB"`, plain integers).
//!
//! Both accept either a string with a unit or a bare integer (seconds for
//! durations, bytes for sizes), so `timeout = 5` and `timeout = "5s"` agree.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Longest duration any key accepts: longer values are typos or overflow
/// attempts (`Instant + Duration` must never overflow on the request path).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Largest size any key accepts (1 TiB): sums and products of sizes stay far from `u64::MAX`.
pub const MAX_SIZE: u64 = 1 << 40;

fn duration_from_secs(seconds: u64) -> Result<Duration, String> {
    if seconds > MAX_DURATION.as_secs() {
        return Err(format!(
            "{seconds} seconds is out of range (at most 365 days)"
        ));
    }
    Ok(Duration::from_secs(seconds))
}

fn size_in_range(bytes: u64) -> Result<u64, String> {
    if bytes > MAX_SIZE {
        return Err(format!("{bytes} bytes is out of range (at most 1TiB)"));
    }
    Ok(bytes)
}

/// A duration as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

/// A byte size as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// Parses `"150ms"`, `"5s"`, `"2m"`, `"1h"`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "`{text}` is not a duration (expected e.g. \"500ms\", \"5s\", \"2m\")"
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (bad number `{number}`)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => {
            return Err(format!(
                "`{text}` has unknown duration unit `{other}` (use ms, s, m, h or d)"
            ))
        }
    };
    if !seconds.is_finite() || seconds > MAX_DURATION.as_secs_f64() {
        return Err(format!("`{text}` is out of range (at most 365 days)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses `"512"`, `"16KiB"`, `"64MiB"`, `"1GiB"` (also `KB`/`MB`/`GB`/`k`/`m`/`g`,
/// all powers of 1024 as nginx does).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "`{text}` is not a size (expected e.g. \"16KiB\", \"64MiB\")"
        ));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (bad number `{number}`)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "`{text}` has unknown size unit `{other}` (use KiB, MiB or GiB)"
            ))
        }
    };
    value
        .checked_mul(multiplier)
        .filter(|&bytes| bytes <= MAX_SIZE)
        .ok_or_else(|| format!("`{text}` is out of range (at most 1TiB)"))
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"5s\" or a number of seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                let seconds =
                    u64::try_from(v).map_err(|_| E::custom("a duration cannot be negative"))?;
                self.visit_u64(seconds)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                duration_from_secs(v).map(ConfigDuration).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"16KiB\", \"64MiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                let bytes = u64::try_from(v).map_err(|_| E::custom("a size cannot be negative"))?;
                self.visit_u64(bytes)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                size_in_range(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn durations_reject_garbage() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn sizes_are_powers_of_1024() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("16KiB").unwrap(), 16 * 1024);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("1 parsec").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert!(parse_size("2048GiB").is_err(), "over 1TiB");
        assert!(parse_size("1024GiB").is_ok());
    }

    #[test]
    fn durations_are_bounded() {
        assert!(parse_duration("366d").is_err());
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("9000h").is_err());
        assert!(parse_duration("8760h").is_ok());
        assert!(duration_from_secs(9_223_372_036_854_775_807).is_err());
    }
}
