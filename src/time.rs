//! Time as corral writes it: RFC 3339 UTC with milliseconds (`2026-11-22T10:15:31.123Z`),
//! read back leniently (any RFC 3339 offset or precision, as hand-written specs use), and
//! durations like `7d` / `1h` for flags. Parsing is done here, in one place, so no command
//! depends on one platform's `date`, and every duration or count that comes from input is
//! range-checked here (DESIGN §6 S5): one bounded vocabulary, saturating arithmetic.

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

/// Parses `90`, `90s`, `15m`, `1h`, `7d`, `2w` into a chrono duration: the bounded
/// vocabulary of [`parse_secs`] (so `1e300` and `inf` are refused, exit 6), kept as a chrono
/// type for callers that subtract it from a timestamp.
pub fn parse_duration(s: &str) -> Result<chrono::Duration> {
    parse_secs(s).map(chrono_secs)
}

/// Seconds (already range-checked or not) as a chrono duration, saturating at
/// [`MAX_SECONDS`]; NaN and negatives are zero.
pub fn chrono_secs(secs: f64) -> chrono::Duration {
    let secs = if secs.is_nan() {
        0.0
    } else {
        secs.clamp(0.0, MAX_SECONDS)
    };
    chrono::Duration::milliseconds((secs * 1000.0).round() as i64)
}

/// The longest span corral accepts anywhere (flags, env, policy, specs, tasks): 100 years.
/// Larger values are refused on input (exit 6) and saturate in arithmetic, so no timestamp
/// computation can overflow (DESIGN §6 S5).
pub const MAX_SECONDS: f64 = 100.0 * 365.0 * 86_400.0;

/// The one duration vocabulary for flags and config: `5`, `0.5`, `500ms`, `30s`, `1.5m`,
/// `15m`, `1h`, `7d`, `2w`. Refuses negatives, NaN, infinity and anything over
/// [`MAX_SECONDS`].
pub fn parse_secs(s: &str) -> Result<f64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        Error::Invalid(format!(
            "invalid duration {s:?}: expected seconds or e.g. 0.5, 30s, 15m, 1h, 7d"
        ))
    };
    if num.is_empty() {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult = match unit.trim() {
        "ms" => 0.001,
        "" | "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        _ => return Err(bad()),
    };
    check_secs(s, n * mult)
}

/// Range-checks a number of seconds that came from input: finite, ≥ 0, ≤ [`MAX_SECONDS`].
pub fn check_secs(what: &str, v: f64) -> Result<f64> {
    if v.is_finite() && (0.0..=MAX_SECONDS).contains(&v) {
        Ok(v)
    } else {
        Err(Error::Invalid(format!(
            "{what}: {v} seconds is out of range (0 to {MAX_SECONDS})"
        )))
    }
}

/// A positive duration from input (intervals, where zero would spin): [`parse_secs`] and
/// then refuses 0.
pub fn parse_positive_secs(what: &str, s: &str) -> Result<f64> {
    let v = parse_secs(s).map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err(Error::Invalid(format!(
            "{what}: must be more than 0 seconds"
        )))
    }
}

/// The largest number of minutes a run-time limit may be: [`MAX_SECONDS`] in minutes.
pub const MAX_MINUTES: u64 = (MAX_SECONDS as u64) / 60;

/// Range-checks a count of minutes from input (exit 6 when over [`MAX_MINUTES`]).
pub fn check_minutes(what: &str, m: u64) -> Result<u64> {
    if m <= MAX_MINUTES {
        Ok(m)
    } else {
        Err(Error::Invalid(format!(
            "{what}: {m} minutes is out of range (0 to {MAX_MINUTES}, 100 years)"
        )))
    }
}

/// Range-checks a count (workers, items) from input: at most `max`, exit 6 beyond it.
pub fn check_count(what: &str, n: u64, max: u64) -> Result<u64> {
    if n <= max {
        Ok(n)
    } else {
        Err(Error::Invalid(format!(
            "{what}: {n} is out of range (at most {max})"
        )))
    }
}

/// Seconds as a `std::time::Duration`, saturating: NaN and negatives are zero, huge values
/// are [`MAX_SECONDS`]. Never panics, unlike `Duration::from_secs_f64`.
pub fn duration(secs: f64) -> std::time::Duration {
    if secs.is_nan() || secs <= 0.0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::from_secs_f64(secs.min(MAX_SECONDS))
}

/// `t + secs`, saturating at chrono's limits instead of panicking.
pub fn add_secs(t: Timestamp, secs: f64) -> Timestamp {
    let ms = if secs.is_nan() {
        0.0
    } else {
        (secs * 1000.0).clamp(-MAX_SECONDS * 1000.0, MAX_SECONDS * 1000.0)
    };
    t.checked_add_signed(chrono::Duration::milliseconds(ms as i64))
        .unwrap_or(if ms >= 0.0 {
            DateTime::<Utc>::MAX_UTC
        } else {
            DateTime::<Utc>::MIN_UTC
        })
}

/// Seconds from `from` to `to` (negative when `to` is earlier).
pub fn secs_between(from: Timestamp, to: Timestamp) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// A point in time given either as a duration ago (`1h`) or as a timestamp.
pub fn parse_since(s: &str, now: Timestamp) -> Result<Timestamp> {
    match parse_duration(s) {
        Ok(d) => Ok(now
            .checked_sub_signed(d)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)),
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
    fn one_bounded_vocabulary() {
        assert_eq!(parse_secs("5").unwrap(), 5.0);
        assert_eq!(parse_secs("0.5").unwrap(), 0.5);
        assert_eq!(parse_secs("30s").unwrap(), 30.0);
        assert_eq!(parse_secs("15m").unwrap(), 900.0);
        assert_eq!(parse_secs("7d").unwrap(), 604_800.0);
        assert_eq!(parse_secs("500ms").unwrap(), 0.5);
        assert!(parse_positive_secs("--interval", "0").is_err());
        assert!(parse_positive_secs("--interval", "inf").is_err());
        assert_eq!(parse_positive_secs("--interval", "0.2").unwrap(), 0.2);
        assert!(check_minutes("m", 1_000_000_000_000).is_err());
        assert_eq!(check_minutes("m", 45).unwrap(), 45);
        assert!(check_count("n", 10_001, 10_000).is_err());
        for bad in ["", "-1", "1e300", "inf", "NaN", "3x", "1e13", "1..2", "m"] {
            assert!(parse_secs(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_secs("x", f64::INFINITY).is_err());
        assert_eq!(duration(f64::NAN), std::time::Duration::ZERO);
        assert_eq!(duration(1e300).as_secs_f64(), MAX_SECONDS);
        let t = parse("2026-11-22T10:00:00Z").unwrap();
        assert_eq!(add_secs(t, 1e300), add_secs(t, MAX_SECONDS));
        assert_eq!(
            add_secs(DateTime::<Utc>::MAX_UTC, 60.0),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(format(&add_secs(t, 1.5)), "2026-11-22T10:00:01.500Z");
        assert_eq!(secs_between(t, add_secs(t, -2.0)), -2.0);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap().num_seconds(), 604_800);
        assert_eq!(parse_duration("90").unwrap().num_seconds(), 90);
        assert_eq!(parse_duration("15m").unwrap().num_seconds(), 900);
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e300").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(parse_duration("1.5m").unwrap().num_seconds(), 90);
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
