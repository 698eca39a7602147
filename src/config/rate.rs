//! Upload rate limits: `[upload] rate_limit` and its schedule, File Gateway's
//! bandwidth rate limit schedule.

use serde::Deserialize;

/// Bytes per second, written "100MiB/s" (any size unit, then "/s"), or "unlimited".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Rate(pub Option<u64>);

/// The least limit accepted: below it a single 16 MiB part would wait minutes.
pub const MIN_RATE: u64 = 64 << 10;

impl TryFrom<String> for Rate {
    type Error = String;
    fn try_from(s: String) -> Result<Rate, String> {
        if s.trim() == "unlimited" {
            return Ok(Rate(None));
        }
        let size = s
            .trim()
            .strip_suffix("/s")
            .ok_or_else(|| format!("`{s}` is not a rate such as \"100MiB/s\" or \"unlimited\""))?;
        let n = super::parse_byte_size(size)?;
        if n < MIN_RATE {
            return Err(format!("`{s}` is below the least rate, 64KiB/s"));
        }
        Ok(Rate(Some(n)))
    }
}

/// One entry of `[[upload.rate_schedule]]`: on `days`, during `hours` (local time),
/// uploads go at most at `rate`. The first entry that applies wins; outside them all,
/// `rate_limit` does.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateWindow {
    /// "mon-fri", "sat,sun", "daily"; a window that runs past midnight belongs to
    /// the day it starts on.
    pub days: Days,
    /// "08:00-18:00"; "22:00-06:00" runs past midnight.
    pub hours: Hours,
    pub rate: Rate,
}

/// Days of the week, bit 0 Sunday (as `tm_wday`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Days(pub u8);

/// Minutes since midnight: `[start, end)`, wrapping past midnight when end <= start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Hours {
    pub start: u16,
    pub end: u16,
}

const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn day(s: &str) -> Result<u8, String> {
    let d = s.trim().to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|n| d.starts_with(n) && n.len() >= 3 && d.len() >= 3)
        .map(|i| i as u8)
        .ok_or_else(|| format!("`{s}` is not a day (mon, tue, ... sun)"))
}

impl TryFrom<String> for Days {
    type Error = String;
    fn try_from(s: String) -> Result<Days, String> {
        if s.trim() == "daily" {
            return Ok(Days(0x7f));
        }
        let mut mask = 0u8;
        for item in s.split(',') {
            match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (day(a)?, day(b)?);
                    let mut d = a;
                    loop {
                        mask |= 1 << d;
                        if d == b {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => mask |= 1 << day(item)?,
            }
        }
        Ok(Days(mask))
    }
}

fn minute(s: &str) -> Result<u16, String> {
    let bad = || format!("`{s}` is not a time such as \"08:00\"");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl TryFrom<String> for Hours {
    type Error = String;
    fn try_from(s: String) -> Result<Hours, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not hours such as \"08:00-18:00\""))?;
        let (start, end) = (minute(a)?, minute(b)?);
        if start == end {
            return Err(format!("`{s}` is an empty window"));
        }
        Ok(Hours { start, end })
    }
}

impl RateWindow {
    /// Whether it applies on weekday `wday` (0 Sunday) at `minute` past midnight.
    pub fn applies(&self, wday: u8, minute: u16) -> bool {
        let on = |d: u8| self.days.0 & (1 << (d % 7)) != 0;
        let Hours { start, end } = self.hours;
        if start < end {
            on(wday) && (start..end).contains(&minute)
        } else {
            (on(wday) && minute >= start) || (on(wday + 6) && minute < end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &str, hours: &str) -> RateWindow {
        RateWindow {
            days: Days::try_from(days.to_string()).unwrap(),
            hours: Hours::try_from(hours.to_string()).unwrap(),
            rate: Rate(Some(MIN_RATE)),
        }
    }

    #[test]
    fn rates_days_and_hours_parse_or_say_why_not() {
        assert_eq!(Rate::try_from("100MiB/s".to_string()), Ok(Rate(Some(100 << 20))));
        assert_eq!(Rate::try_from("unlimited".to_string()), Ok(Rate(None)));
        for bad in ["100MiB", "1KiB/s", "fast/s", ""] {
            assert!(Rate::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert_eq!(Days::try_from("mon-fri".to_string()), Ok(Days(0b011_1110)));
        assert_eq!(Days::try_from("sat,sun".to_string()), Ok(Days(0b100_0001)));
        assert_eq!(Days::try_from("fri-mon".to_string()), Ok(Days(0b110_0011)));
        assert_eq!(Days::try_from("daily".to_string()), Ok(Days(0x7f)));
        for bad in ["someday", "mo", "mon-"] {
            assert!(Days::try_from(bad.to_string()).is_err(), "{bad}");
        }
        for bad in ["08:00", "8-18", "08:00-08:00", "25:00-26:00", "08:60-09:00"] {
            assert!(Hours::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn windows_apply_on_their_days_and_hours_and_past_midnight() {
        let office = window("mon-fri", "08:00-18:00");
        assert!(office.applies(1, 8 * 60));
        assert!(!office.applies(1, 18 * 60));
        assert!(!office.applies(6, 9 * 60), "saturday");
        let night = window("fri", "22:00-06:00");
        assert!(night.applies(5, 23 * 60), "friday night");
        assert!(night.applies(6, 5 * 60), "saturday morning, from friday");
        assert!(!night.applies(5, 5 * 60), "friday morning belongs to thursday");
        assert!(window("daily", "00:00-24:00").applies(0, 0));
    }
}
