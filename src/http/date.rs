//! HTTP-date (RFC 9110 section 5.6.7): the one parser every date field
//! goes through (`Date`, `Expires`, `Last-Modified`, `If-Modified-Since`,
//! `If-Range`).
//!
//! All three formats a recipient must accept are read:
//!
//! - IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`
//! - RFC 850: `Sunday, 06-Nov-94 08:49:37 GMT` (a two-digit year more than
//!   50 years ahead is taken as the most recent past year with those digits)
//! - asctime: `Sun Nov  6 08:49:37 1994`
//!
//! Day and month names are matched without regard to case, and the day of
//! the week is checked for form only: a wrong weekday does not make the date
//! invalid (the calendar date says when it is). Anything else is `None`,
//! which callers treat as the field says (an invalid `Expires` means
//! "already expired").

use std::time::{Duration, SystemTime};

const MONTHS: [&[u8; 3]; 12] = [
    b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec",
];
const SHORT_DAYS: [&[u8]; 7] = [b"mon", b"tue", b"wed", b"thu", b"fri", b"sat", b"sun"];
const LONG_DAYS: [&[u8]; 7] = [
    b"monday",
    b"tuesday",
    b"wednesday",
    b"thursday",
    b"friday",
    b"saturday",
    b"sunday",
];

/// Parses an HTTP-date in any of the three formats; surrounding whitespace is ignored.
pub fn parse(value: &[u8]) -> Option<SystemTime> {
    let v = crate::http::headers::trim(value);
    let parts = imf_fixdate(v)
        .or_else(|| rfc850(v, SystemTime::now()))
        .or_else(|| asctime(v))?;
    parts.to_system_time()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parts {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Parts {
    fn to_system_time(self) -> Option<SystemTime> {
        let days_in_month = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            _ if is_leap(self.year) => 29,
            _ => 28,
        };
        if !(1..=days_in_month).contains(&self.day)
            || self.hour > 23
            || self.minute > 59
            // 60: a leap second, which the grammar allows.
            || self.second > 60
        {
            return None;
        }
        let days = days_from_civil(self.year, self.month, self.day);
        let secs = days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second);
        // Dates before 1970 are in the past as far as any cache rule cares.
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A small cursor over the bytes of a date.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn literal(&mut self, s: &[u8]) -> Option<()> {
        let (head, tail) = self.rest.split_at_checked(s.len())?;
        head.eq_ignore_ascii_case(s).then(|| self.rest = tail)
    }

    fn digits(&mut self, n: usize) -> Option<u32> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        if !head.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.rest = tail;
        Some(
            head.iter()
                .fold(0, |acc, &b| acc * 10 + u32::from(b - b'0')),
        )
    }

    fn alpha(&mut self) -> &'a [u8] {
        let n = self
            .rest
            .iter()
            .position(|b| !b.is_ascii_alphabetic())
            .unwrap_or(self.rest.len());
        let (word, tail) = self.rest.split_at(n);
        self.rest = tail;
        word
    }

    fn month(&mut self) -> Option<u32> {
        let (head, tail) = self.rest.split_at_checked(3)?;
        let i = MONTHS.iter().position(|m| head.eq_ignore_ascii_case(*m))?;
        self.rest = tail;
        Some(i as u32 + 1)
    }

    /// `HH:MM:SS`
    fn time(&mut self) -> Option<(u32, u32, u32)> {
        let h = self.digits(2)?;
        self.literal(b":")?;
        let m = self.digits(2)?;
        self.literal(b":")?;
        let s = self.digits(2)?;
        Some((h, m, s))
    }

    fn end(&self) -> Option<()> {
        self.rest.is_empty().then_some(())
    }
}

fn is_day(word: &[u8], names: &[&[u8]]) -> bool {
    names.iter().any(|d| word.eq_ignore_ascii_case(d))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn imf_fixdate(v: &[u8]) -> Option<Parts> {
    let mut c = Cursor { rest: v };
    if !is_day(c.alpha(), &SHORT_DAYS) {
        return None;
    }
    c.literal(b", ")?;
    let day = c.digits(2)?;
    c.literal(b" ")?;
    let month = c.month()?;
    c.literal(b" ")?;
    let year = c.digits(4)?;
    c.literal(b" ")?;
    let (hour, minute, second) = c.time()?;
    c.literal(b" GMT")?;
    c.end()?;
    Some(Parts {
        year: i64::from(year),
        month,
        day,
        hour,
        minute,
        second,
    })
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`
fn rfc850(v: &[u8], now: SystemTime) -> Option<Parts> {
    let mut c = Cursor { rest: v };
    if !is_day(c.alpha(), &LONG_DAYS) {
        return None;
    }
    c.literal(b", ")?;
    let day = c.digits(2)?;
    c.literal(b"-")?;
    let month = c.month()?;
    c.literal(b"-")?;
    let yy = i64::from(c.digits(2)?);
    c.literal(b" ")?;
    let (hour, minute, second) = c.time()?;
    c.literal(b" GMT")?;
    c.end()?;
    // RFC 9110 section 5.6.7: a year that would be more than 50 years in
    // the future is the most recent past year with the same last two digits.
    let this_year =
        1970 + now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs() as i64 / 31_556_952;
    let mut year = this_year - this_year % 100 + yy;
    if year > this_year + 50 {
        year -= 100;
    }
    Some(Parts {
        year,
        month,
        day,
        hour,
        minute,
        second,
    })
}

/// `Sun Nov  6 08:49:37 1994` (the day is space-padded: ` 6` or `16`)
fn asctime(v: &[u8]) -> Option<Parts> {
    let mut c = Cursor { rest: v };
    if !is_day(c.alpha(), &SHORT_DAYS) {
        return None;
    }
    c.literal(b" ")?;
    let month = c.month()?;
    c.literal(b" ")?;
    let day = if c.literal(b" ").is_some() {
        c.digits(1)?
    } else {
        c.digits(2)?
    };
    c.literal(b" ")?;
    let (hour, minute, second) = c.time()?;
    c.literal(b" ")?;
    let year = c.digits(4)?;
    c.end()?;
    Some(Parts {
        year: i64::from(year),
        month,
        day,
        hour,
        minute,
        second,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sun, 06 Nov 1994 08:49:37 GMT
    const EXAMPLE: u64 = 784_111_777;

    fn at(secs: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn imf_fixdate_is_read() {
        assert_eq!(parse(b"Sun, 06 Nov 1994 08:49:37 GMT"), at(EXAMPLE));
    }

    #[test]
    fn rfc850_date_is_read() {
        assert_eq!(parse(b"Sunday, 06-Nov-94 08:49:37 GMT"), at(EXAMPLE));
    }

    #[test]
    fn asctime_date_is_read() {
        assert_eq!(parse(b"Sun Nov  6 08:49:37 1994"), at(EXAMPLE));
        assert_eq!(
            parse(b"Wed Nov 16 08:49:37 1994"),
            at(EXAMPLE + 10 * 86_400)
        );
    }

    #[test]
    fn day_and_month_names_are_case_insensitive() {
        assert_eq!(parse(b"SUN, 06 NOV 1994 08:49:37 GMT"), at(EXAMPLE));
        assert_eq!(parse(b"sunday, 06-nov-94 08:49:37 gmt"), at(EXAMPLE));
        assert_eq!(parse(b"sun nov  6 08:49:37 1994"), at(EXAMPLE));
    }

    #[test]
    fn a_wrong_weekday_does_not_reject_the_date() {
        assert_eq!(parse(b"Mon, 06 Nov 1994 08:49:37 GMT"), at(EXAMPLE));
        assert_eq!(parse(b"Friday, 06-Nov-94 08:49:37 GMT"), at(EXAMPLE));
        assert_eq!(parse(b"Thu Nov  6 08:49:37 1994"), at(EXAMPLE));
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert_eq!(parse(b"  Sun, 06 Nov 1994 08:49:37 GMT "), at(EXAMPLE));
    }

    #[test]
    fn invalid_dates_are_none() {
        for bad in [
            &b"0"[..],
            b"-1",
            b"",
            b"tomorrow",
            b"Sun, 31 Feb 2024 00:00:00 GMT",
            b"Sun, 06 Nov 1994 24:00:00 GMT",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 6 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 GMT trailing",
            b"Xyz, 06 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn leap_days_are_valid_only_in_leap_years() {
        assert!(parse(b"Thu, 29 Feb 2024 00:00:00 GMT").is_some());
        assert!(parse(b"Thu, 29 Feb 2023 00:00:00 GMT").is_none());
        assert!(parse(b"Tue, 29 Feb 2000 00:00:00 GMT").is_some());
        assert!(parse(b"Tue, 29 Feb 1900 00:00:00 GMT").is_none());
    }

    #[test]
    fn rfc850_two_digit_years_more_than_50_years_ahead_are_in_the_past() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000); // 2026
        let year = |v: &[u8]| rfc850(v, now).map(|p| p.year);
        assert_eq!(year(b"Sunday, 06-Nov-94 08:49:37 GMT"), Some(1994));
        assert_eq!(year(b"Sunday, 06-Nov-30 08:49:37 GMT"), Some(2030));
        assert_eq!(year(b"Sunday, 06-Nov-76 08:49:37 GMT"), Some(2076));
        assert_eq!(year(b"Sunday, 06-Nov-77 08:49:37 GMT"), Some(1977));
    }
}
