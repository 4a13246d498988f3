//! JWKS refresh schedule, shared by all of Envoy's worker VMs.
//!
//! One [`FetchState`] per provider lives in proxy-wasm shared data. A VM that wants to
//! fetch first claims the fetch by writing `attempt_ms` with compare-and-swap, so N
//! workers make one fetch, and no VM may start a fetch sooner than `min_refetch` after
//! the last attempt: a flood of tokens with random `kid`s cannot become a flood of
//! fetches. The fetched document travels in the state too, so every VM installs the
//! same keys.

use crate::time::millis;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Shared-data key of a provider's state.
pub fn shared_key(provider: &str) -> String {
    format!("mcp_gateway/jwks/{provider}")
}

/// What all VMs know about one provider's JWKS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchState {
    /// Bumped each time a new document is stored.
    pub version: u64,
    /// The last good JWKS document.
    pub jwks: Option<String>,
    /// When a scheduled refresh is due (ms since the epoch).
    pub next_ms: u64,
    /// When the last fetch started.
    pub attempt_ms: u64,
    /// When the last fetch ended (success or failure).
    pub done_ms: u64,
    /// Failures since the last success.
    pub failures: u32,
}

impl FetchState {
    /// A fetch was started and has neither ended nor timed out.
    pub fn in_flight(&self, now_ms: u64, timeout: Duration) -> bool {
        self.attempt_ms > self.done_ms && now_ms < self.attempt_ms.saturating_add(millis(timeout))
    }

    /// Whether a fetch is wanted: never fetched, refresh due, or a `kid` is unknown.
    pub fn wants_fetch(&self, now_ms: u64, unknown_kid: bool) -> bool {
        self.jwks.is_none() || now_ms >= self.next_ms || unknown_kid
    }

    /// Whether a fetch may start now: none in flight, and the last attempt is at least
    /// `min_refetch` ago.
    pub fn may_start(&self, now_ms: u64, min_refetch: Duration, timeout: Duration) -> bool {
        let never = self.attempt_ms == 0;
        !self.in_flight(now_ms, timeout) && (never || now_ms >= self.attempt_ms.saturating_add(millis(min_refetch)))
    }

    pub fn start(&mut self, now_ms: u64) {
        self.attempt_ms = now_ms.max(self.done_ms.saturating_add(1));
    }

    /// A fetch brought a valid document. The next refresh honours `Cache-Control:
    /// max-age` but stays within [`min_refetch`, `refresh`].
    pub fn succeeded(
        &mut self,
        now_ms: u64,
        jwks: String,
        max_age: Option<u64>,
        refresh: Duration,
        min_refetch: Duration,
    ) {
        let every = max_age.map(|s| Duration::from_secs(s).clamp(min_refetch, refresh)).unwrap_or(refresh);
        if self.jwks.as_deref() != Some(jwks.as_str()) {
            self.version += 1;
            self.jwks = Some(jwks);
        }
        self.next_ms = now_ms.saturating_add(millis(every));
        self.done_ms = now_ms.max(self.attempt_ms);
        self.failures = 0;
    }

    /// A fetch failed: keep the last good keys, retry after `min_refetch`.
    pub fn failed(&mut self, now_ms: u64, min_refetch: Duration) {
        self.failures = self.failures.saturating_add(1);
        self.done_ms = now_ms.max(self.attempt_ms);
        self.next_ms = now_ms.saturating_add(millis(min_refetch));
    }
}

/// `max-age` of a `Cache-Control` header, in seconds (`no-cache`/`no-store` mean 0).
pub fn max_age(cache_control: &str) -> Option<u64> {
    let mut result = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(0);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            result = v.trim_matches('"').parse().ok();
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(30);
    const REFRESH: Duration = Duration::from_secs(300);
    const TIMEOUT: Duration = Duration::from_secs(2);

    #[test]
    fn parses_cache_control() {
        assert_eq!(max_age("public, max-age=600"), Some(600));
        assert_eq!(max_age("Max-Age=\"60\", must-revalidate"), Some(60));
        assert_eq!(max_age("no-store"), Some(0));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn first_fetch_is_wanted_and_allowed() {
        let s = FetchState::default();
        assert!(s.wants_fetch(1_000, false));
        assert!(s.may_start(1_000, MIN, TIMEOUT));
    }

    #[test]
    fn one_fetch_at_a_time_and_none_sooner_than_min_refetch() {
        let mut s = FetchState::default();
        s.start(1_000);
        assert!(s.in_flight(1_500, TIMEOUT));
        assert!(!s.may_start(1_500, MIN, TIMEOUT));
        s.succeeded(1_800, "{\"keys\":[]}".into(), None, REFRESH, MIN);
        assert_eq!(s.version, 1);
        // An unknown kid wants a fetch, but the last attempt was under 30 s ago.
        assert!(s.wants_fetch(10_000, true));
        assert!(!s.may_start(10_000, MIN, TIMEOUT));
        assert!(s.may_start(31_000, MIN, TIMEOUT));
        // A timed-out fetch no longer blocks.
        let mut t = FetchState::default();
        t.start(1_000);
        assert!(!t.in_flight(3_001, TIMEOUT));
    }

    #[test]
    fn refresh_honours_max_age_within_bounds() {
        let mut s = FetchState::default();
        s.start(1);
        s.succeeded(1_000, "a".into(), Some(60), REFRESH, MIN);
        assert_eq!(s.next_ms, 61_000);
        s.succeeded(1_000, "a".into(), Some(5), REFRESH, MIN);
        assert_eq!(s.next_ms, 31_000, "max-age below min_refetch is raised");
        s.succeeded(1_000, "a".into(), Some(86_400), REFRESH, MIN);
        assert_eq!(s.next_ms, 301_000, "max-age above refresh is capped");
        assert_eq!(s.version, 1, "same document, same version");
        s.succeeded(2_000, "b".into(), None, REFRESH, MIN);
        assert_eq!(s.version, 2);
    }

    #[test]
    fn failures_keep_the_last_good_document() {
        let mut s = FetchState::default();
        s.start(1);
        s.succeeded(1_000, "good".into(), None, REFRESH, MIN);
        s.start(400_000);
        s.failed(400_100, MIN);
        assert_eq!(s.jwks.as_deref(), Some("good"));
        assert_eq!(s.failures, 1);
        assert_eq!(s.next_ms, 430_100);
        assert!(!s.in_flight(400_200, TIMEOUT));
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = FetchState::default();
        s.start(5);
        s.succeeded(9, "{}".into(), Some(40), REFRESH, MIN);
        let back: FetchState = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
