//! Time as corral writes it: RFC 3339 UTC with milliseconds (`2026-11-22T10:15:31.123Z`),
//! read back leniently (any RFC 3339 offset or precision, as hand-written specs use), and
//! durations like `7d` / `1h` for flags. Parsing is done here, in one place, so no command
//! depends on one platform's `date`.

use crate::error::{Error, Result};
use chrono::{DateTime, SecondsFormat, Utc};

/// UTC timestamp type used everywhere.
pub type Timestamp = DateTime<Utc>;

/// The current time. Staleness logic takes `now` as a parameter so tests need no sleeps.
pub fn now() -> Timestamp {
    Utc::now()
}

/// Formats with milliseconds and a `Z`.
pub fn format(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses RFC 3339 (any offset, any precision), also accepting a bare `YYYY-MM-DD`.
pub fn parse(s: &str) -> Result<Timestamp> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    Err(Error::Invalid(format!(
        "invalid timestamp {s:?}: expected RFC 3339, e.g. 2026-11-22T10:15:00Z"
    )))
}

/// Parses `90`, `90s`, `15m`, `1h`, `7d`, `2w` into a duration.
pub fn parse_duration(s: &str) -> Result<chrono::Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: i64 = num.parse().map_err(|_| {
        Error::Invalid(format!(
            "invalid duration {s:?}: expected e.g. 30s, 15m, 1h, 7d"
        ))
    })?;
    let secs = match unit {
        "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => {
            return Err(Error::Invalid(format!(
                "invalid duration unit in {s:?}: use s, m, h, d or w"
            )))
        }
    };
    n.checked_mul(secs)
        .map(chrono::Duration::seconds)
        .ok_or_else(|| Error::Invalid(format!("duration {s:?} too large")))
}

/// A point in time given either as a duration ago (`1h`) or as a timestamp.
pub fn parse_since(s: &str, now: Timestamp) -> Result<Timestamp> {
    match parse_duration(s) {
        Ok(d) => Ok(now - d),
        Err(_) => parse(s),
    }
}

/// Serde helpers that write milliseconds and read any RFC 3339.
pub mod serde_ts {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<Timestamp>`, with `null` for `None`.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            t: &Option<Timestamp>,
            s: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&format(t)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> std::result::Result<Option<Timestamp>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(s) if !s.is_empty() => parse(&s).map(Some).map_err(serde::de::Error::custom),
                _ => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_millis_and_parses_hand_written() {
        let t = parse("2026-11-22T10:15:00Z").unwrap();
        assert_eq!(format(&t), "2026-11-22T10:15:00.000Z");
        let t2 = parse("2026-11-22T12:15:00.5+02:00").unwrap();
        assert_eq!(format(&t2), "2026-11-22T10:15:00.500Z");
        assert_eq!(
            format(&parse("2026-11-22").unwrap()),
            "2026-11-22T00:00:00.000Z"
        );
        assert!(parse("yesterday").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap().num_seconds(), 604_800);
        assert_eq!(parse_duration("90").unwrap().num_seconds(), 90);
        assert_eq!(parse_duration("15m").unwrap().num_seconds(), 900);
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("").is_err());
        let now = parse("2026-11-22T10:00:00Z").unwrap();
        assert_eq!(
            format(&parse_since("1h", now).unwrap()),
            "2026-11-22T09:00:00.000Z"
        );
        assert_eq!(
            format(&parse_since("2026-11-01T00:00:00Z", now).unwrap()),
            "2026-11-01T00:00:00.000Z"
        );
    }
}
