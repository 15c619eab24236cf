//! Dates as RFC 3339 text, written digit by digit.
//!
//! Every answer, event, audit line and stored record carries several dates (some 25 per
//! request and decision). chrono writes them through `fmt`, a character at a time, which was
//! ~5 % of the server's time answering; this writes the same text into a small buffer.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Serialize, Serializer};

/// For `#[serde(serialize_with = "crate::rfc3339::serialize")]`: exactly the text chrono's
/// own `Serialize` gives (`2026-11-30T08:00:00.123Z`, with 0, 3, 6 or 9 fraction digits,
/// whichever shows the time exactly), so what is stored and answered does not change.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 30];
    match write(at, &mut buf).and_then(|len| std::str::from_utf8(&buf[..len]).ok()) {
        Some(text) => serializer.serialize_str(text),
        // Years outside 0..=9999 and leap seconds: rare enough for chrono to write.
        None => at.serialize(serializer),
    }
}

/// Write `at` into `buf`: its length, or `None` for what only chrono writes.
fn write(at: &DateTime<Utc>, buf: &mut [u8; 30]) -> Option<usize> {
    // Taken apart once: each of `DateTime`'s own accessors converts to local time again.
    let naive = at.naive_utc();
    let (date, time) = (naive.date(), naive.time());
    let year = date.year();
    let nanos = time.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let year = year as u32;
    let mut w = Text { buf, len: 0 };
    w.two(year / 100);
    w.two(year % 100);
    w.byte(b'-');
    w.two(date.month());
    w.byte(b'-');
    w.two(date.day());
    w.byte(b'T');
    w.two(time.hour());
    w.byte(b':');
    w.two(time.minute());
    w.byte(b':');
    w.two(time.second());
    if nanos != 0 {
        w.byte(b'.');
        let millis = nanos / 1_000_000;
        w.byte(b'0' + (millis / 100) as u8);
        w.two(millis % 100);
        let rest = nanos % 1_000_000;
        if rest != 0 {
            let micros = rest / 1_000;
            w.byte(b'0' + (micros / 100) as u8);
            w.two(micros % 100);
            let rest = rest % 1_000;
            if rest != 0 {
                w.byte(b'0' + (rest / 100) as u8);
                w.two(rest % 100);
            }
        }
    }
    w.byte(b'Z');
    Some(w.len)
}

/// A buffer being filled (at most 30 bytes: `YYYY-MM-DDThh:mm:ss.nnnnnnnnnZ`).
struct Text<'a> {
    buf: &'a mut [u8; 30],
    len: usize,
}

impl Text<'_> {
    fn byte(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    /// `n` (below 100) as two decimal digits.
    fn two(&mut self, n: u32) {
        self.byte(b'0' + (n / 10) as u8);
        self.byte(b'0' + (n % 10) as u8);
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn ours(at: DateTime<Utc>) -> String {
        #[derive(Serialize)]
        struct One(#[serde(serialize_with = "serialize")] DateTime<Utc>);
        serde_json::to_string(&One(at)).expect("serialises")
    }

    #[test]
    fn writes_what_chrono_writes_at_every_precision() {
        let base = Utc
            .with_ymd_and_hms(2026, 11, 30, 8, 5, 9)
            .single()
            .expect("a date");
        for nanos in [
            0,
            1,
            999,
            1_000,
            120_000,
            1_000_000,
            7_000_000,
            123_456_000,
            123_456_789,
            999_999_999,
        ] {
            let at = base + chrono::Duration::nanoseconds(nanos);
            let chrono_text = serde_json::to_string(&at).expect("serialises");
            assert_eq!(ours(at), chrono_text, "{nanos} ns");
        }
        let now = Utc::now();
        assert_eq!(ours(now), serde_json::to_string(&now).expect("serialises"));
    }

    #[test]
    fn the_first_and_last_four_digit_years_and_beyond() {
        for at in [
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0),
            Utc.with_ymd_and_hms(-1, 6, 15, 12, 0, 0),
        ] {
            let at = at.single().expect("a date");
            assert_eq!(ours(at), serde_json::to_string(&at).expect("serialises"));
        }
    }

    #[test]
    fn a_leap_second_is_left_to_chrono() {
        let at = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .expect("a leap second")
            .and_utc();
        assert_eq!(ours(at), serde_json::to_string(&at).expect("serialises"));
    }
}
