//! A server's hint of when to try again: `Retry-After` (RFC 9110 §10.2.3: delay-seconds or an
//! HTTP-date) and gRPC's `grpc-retry-pushback-ms`. Retries wait for it, and the load balancer
//! penalises a rate-limited endpoint for as long (LINKERD-WIRE.md §8.2).

use http::HeaderMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// How long the response asks the client to wait, if it says. A date in the past means "now"
/// (zero). `Retry-After` wins over `grpc-retry-pushback-ms` when both are present; a negative
/// pushback (gRPC's "do not retry") and unparsable values are no hint.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(v) = headers.get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            // More digits than a u64 holds is still "a very long time".
            return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
        }
        if let Some(at) = parse_http_date(v) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    let ms = headers.get(GRPC_RETRY_PUSHBACK_MS)?.to_str().ok()?.trim();
    ms.parse::<u64>().ok().map(Duration::from_millis)
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the HTTP-date form senders must use. The
/// obsolete RFC 850 and asctime forms are not accepted. The weekday must be a day's name but is
/// not checked against the date, as recipients are asked to be lenient.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    // ASCII only, so the byte offsets below are char boundaries.
    if !s.is_ascii()
        || b.len() != 29
        || &s[3..5] != ", "
        || &s[25..] != " GMT"
        || b[7] != b' '
        || b[11] != b' '
        || b[16] != b' '
        || b[19] != b':'
        || b[22] != b':'
    {
        return None;
    }
    if !DAYS.contains(&&s[..3]) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> { s.get(r).filter(|d| d.bytes().all(|c| c.is_ascii_digit()))?.parse().ok() };
    let day = num(5..7)?;
    let month = MONTHS.iter().position(|m| *m == &s[8..11])? as u64 + 1;
    let year = num(12..16)?;
    let (hour, min, sec) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if day == 0 || day > days_in_month(year, month) || hour > 23 || min > 59 || sec > 60 || year < 1970 {
        return None;
    }
    let days = days_since_epoch(year, month, day);
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + hour * 3_600 + min * 60 + sec))
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to `year-month-day` (year >= 1970), by Howard Hinnant's
/// `days_from_civil` with the year starting in March so leap days come last.
fn days_since_epoch(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn dates_convert_to_unix_time() {
        let secs = |s| parse_http_date(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(secs("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(secs("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(secs("Tue, 29 Feb 2000 12:00:00 GMT"), Some(951_825_600));
        assert_eq!(secs("Sat, 01 Mar 2025 00:00:01 GMT"), Some(1_740_787_201));
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Mon, 29 Feb 1900 00:00:00 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 0x Nov 1994 08:49:37 GMT",
            "Su\u{e9} 06 Nov 1994 08:49:37 GMT",
            "",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_seconds_dates_and_grpc_pushback() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let parse = |h: &[(&'static str, &'static str)]| parse_retry_after(&headers(h), now);
        assert_eq!(parse(&[("retry-after", "120")]), Some(Duration::from_secs(120)));
        assert_eq!(parse(&[("retry-after", " 0 ")]), Some(Duration::ZERO));
        assert_eq!(parse(&[("retry-after", "99999999999999999999999")]), Some(Duration::from_secs(u64::MAX)));
        assert_eq!(parse(&[("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT")]), Some(Duration::from_secs(30)));
        assert_eq!(parse(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]), Some(Duration::ZERO), "a past date means now");
        assert_eq!(parse(&[("retry-after", "-5")]), None);
        assert_eq!(parse(&[("retry-after", "soon")]), None);
        assert_eq!(parse(&[("grpc-retry-pushback-ms", "250")]), Some(Duration::from_millis(250)));
        assert_eq!(parse(&[("grpc-retry-pushback-ms", "-1")]), None, "negative pushback means do not retry");
        assert_eq!(parse(&[("retry-after", "2"), ("grpc-retry-pushback-ms", "250")]), Some(Duration::from_secs(2)));
        assert_eq!(parse(&[("retry-after", "soon"), ("grpc-retry-pushback-ms", "250")]), Some(Duration::from_millis(250)));
        assert_eq!(parse(&[]), None);
    }
}
