//! Durations as rule authors write them: `90s`, `15m`, `4h`, `7d`.

use std::time::Duration;

use thiserror::Error;

/// The longest duration a rule may name: ten years.
pub const MAX_DURATION: Duration = Duration::from_hours(3650 * 24);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("duration `{0}` is negative")]
    Negative(String),
    #[error("duration `{0}` has no unit")]
    MissingUnit(String),
    #[error("duration `{text}` has an unknown unit `{unit}`")]
    UnknownUnit { text: String, unit: String },
    #[error("duration `{0}` is not a whole number of units")]
    NotWhole(String),
    #[error("duration `{0}` is zero")]
    Zero(String),
    #[error("duration `{0}` is too long")]
    TooLong(String),
}

impl DurationError {
    /// What the author should write instead.
    #[must_use]
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Empty | Self::MissingUnit(_) | Self::UnknownUnit { .. } => {
                "write a positive whole number and a unit: s, m, h or d (e.g. 90s, 15m, 4h, 7d)"
            }
            Self::Negative(_) | Self::Zero(_) => "durations are positive, e.g. 15m",
            Self::NotWhole(_) => "use a smaller unit instead of a fraction, e.g. 90m rather than 1.5h",
            Self::TooLong(_) => "the longest duration is 3650d (ten years)",
        }
    }
}

/// Parses `N` followed by a unit `s`, `m`, `h` or `d`; N is a positive whole number and the total at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative(text.to_owned()));
    }
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(DurationError::UnknownUnit { text: text.to_owned(), unit: text.to_owned() });
    }
    let unit_seconds: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => return Err(DurationError::MissingUnit(text.to_owned())),
        _ if unit.starts_with(['.', ',']) => return Err(DurationError::NotWhole(text.to_owned())),
        _ => return Err(DurationError::UnknownUnit { text: text.to_owned(), unit: unit.to_owned() }),
    };
    let Ok(count) = number.parse::<u64>() else {
        return Err(DurationError::TooLong(text.to_owned()));
    };
    if count == 0 {
        return Err(DurationError::Zero(text.to_owned()));
    }
    match count.checked_mul(unit_seconds) {
        Some(seconds) if seconds <= MAX_DURATION.as_secs() => Ok(Duration::from_secs(seconds)),
        _ => Err(DurationError::TooLong(text.to_owned())),
    }
}

/// Writes a duration in the largest unit that divides it: 14400 s is `4h`.
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds >= size && seconds.is_multiple_of(size) {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

/// A duration in milliseconds, as the engine counts time. Every parsed duration fits.
#[must_use]
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_mins(15)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_hours(4)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_hours(168)));
        assert_eq!(parse_duration("3650d"), Ok(MAX_DURATION));
    }

    #[test]
    fn rejects_with_precise_messages() {
        let message = |text: &str| parse_duration(text).unwrap_err().to_string();
        assert_eq!(message(""), "empty duration");
        assert_eq!(message("0m"), "duration `0m` is zero");
        assert_eq!(message("-5m"), "duration `-5m` is negative");
        assert_eq!(message("15"), "duration `15` has no unit");
        assert_eq!(message("15x"), "duration `15x` has an unknown unit `x`");
        assert_eq!(message("4 h"), "duration `4 h` has an unknown unit ` h`");
        assert_eq!(message("h"), "duration `h` has an unknown unit `h`");
        assert_eq!(message("1.5h"), "duration `1.5h` is not a whole number of units");
        assert_eq!(message("3651d"), "duration `3651d` is too long");
        assert_eq!(message("99999999999999999999999d"), "duration `99999999999999999999999d` is too long");
        assert_eq!(message("18446744073709551615s"), "duration `18446744073709551615s` is too long");
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_hours(4)), "4h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_mins(90)), "90m");
        assert_eq!(format_duration(Duration::from_hours(168)), "7d");
    }
}
