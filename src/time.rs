//! Times as the gateway stores them: whole milliseconds in a `u64` (shared data, audit
//! records, the JWKS schedule).

use std::time::Duration;

/// `d` in whole milliseconds, saturating at `u64::MAX` instead of truncating the `u128`.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_truncate_below_a_millisecond_and_saturate_above_u64() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(1999)), 1);
        assert_eq!(millis(Duration::from_secs(86_400)), 86_400_000);
        assert_eq!(millis(Duration::from_millis(u64::MAX)), u64::MAX);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
