//! Time as the service stores and shows it: Unix seconds (`f64`) in the
//! database, a decimal string in task documents, RFC 3339 in messages
//! people read. The lowest floor of the crate: it imports nothing of it.

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    hpfaas_protocol::task::now_unix()
}

/// Unix seconds as the decimal string the task document uses.
pub fn time_str(t: f64) -> String {
    format!("{t:.6}")
}

/// Unix seconds as RFC 3339 UTC with milliseconds, e.g.
/// `2023-11-14T22:13:20.250Z`, for messages people read.
pub fn rfc3339(t: f64) -> String {
    if !t.is_finite() || t.abs() > 1e13 {
        return "an unknown time".into();
    }
    let whole = t.floor();
    let millis = (((t - whole) * 1000.0) as u32).min(999);
    let secs = whole as i64;
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000.25), "2023-11-14T22:13:20.250Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(f64::NAN), "an unknown time");
    }

    #[test]
    fn task_documents_show_microseconds() {
        assert_eq!(time_str(1_700_000_000.25), "1700000000.250000");
        assert_eq!(time_str(0.0), "0.000000");
    }

    #[test]
    fn now_is_after_the_epoch() {
        let t = now();
        assert!(t > 1_600_000_000.0 && t.is_finite(), "{t}");
    }
}
