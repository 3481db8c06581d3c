//! Times as RFC 3339 text in UTC, for what Berth writes for others to read (token answers,
//! event payloads).

/// Unix seconds as RFC 3339 UTC (`2009-11-10T23:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    let (date, of_day) = civil(secs);
    format!("{date}T{}Z", clock(of_day))
}

/// Unix milliseconds as RFC 3339 UTC to the millisecond (`2009-11-10T23:00:00.123Z`).
pub fn rfc3339_millis(millis: i64) -> String {
    let (date, of_day) = civil(millis.div_euclid(1000));
    format!("{date}T{}.{:03}Z", clock(of_day), millis.rem_euclid(1000))
}

/// The date (`YYYY-MM-DD`) of Unix second `secs`, and the seconds into its day.
fn civil(secs: i64) -> (String, i64) {
    let days = secs.div_euclid(86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        secs.rem_euclid(86_400),
    )
}

fn clock(of_day: i64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_257_894_000), "2009-11-10T23:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            rfc3339_millis(1_796_687_999_999),
            "2026-12-07T23:59:59.999Z"
        );
    }
}
