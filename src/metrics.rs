//! Counters and histograms of the running milter, in Prometheus' text format.
//!
//! One [`Metrics`] lives as long as the process (it is shared by every configuration generation
//! across reloads) and is handed to the parts that count.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label pairs with static names and values: no allocation to count.
type Labels<const N: usize> = [(&'static str, &'static str); N];

fn fetch_histogram() -> Histogram {
    // 1 ms … ~16 s: a local file, a warm Vault read, up to a backend that hits its timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// What a key lookup was answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A fresh cached key.
    Hit,
    /// Not cached (or expired past use): fetched while the message waited.
    Miss,
    /// The last good key, past its `ttl`, served while a refresh runs or fails.
    Stale,
    /// A failure remembered from a recent fetch (`negative_ttl`).
    Negative,
}

impl Lookup {
    fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Stale => "stale",
            Lookup::Negative => "negative",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    key_lookups: Family<Labels<2>, Counter>,
    key_fetch_errors: Family<Labels<1>, Counter>,
    key_fetch_seconds: Family<Labels<1>, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("signet");
        let key_lookups = Family::<Labels<2>, Counter>::default();
        registry.register(
            "key_cache_lookups",
            "Key lookups by backend and result (hit, miss, stale, negative)",
            key_lookups.clone(),
        );
        let key_fetch_errors = Family::<Labels<1>, Counter>::default();
        registry.register(
            "key_fetch_errors",
            "Failed key fetches by backend",
            key_fetch_errors.clone(),
        );
        let key_fetch_seconds = Family::new_with_constructor(fetch_histogram as fn() -> Histogram);
        registry.register(
            "key_fetch_duration_seconds",
            "Time to fetch and parse a key, by backend",
            key_fetch_seconds.clone(),
        );
        Metrics {
            registry,
            key_lookups,
            key_fetch_errors,
            key_fetch_seconds,
        }
    }

    pub fn key_lookup(&self, backend: &'static str, result: Lookup) {
        self.key_lookups
            .get_or_create(&[("backend", backend), ("result", result.as_str())])
            .inc();
    }

    pub fn key_fetch(&self, backend: &'static str, seconds: f64, ok: bool) {
        self.key_fetch_seconds
            .get_or_create(&[("backend", backend)])
            .observe(seconds);
        if !ok {
            self.key_fetch_errors
                .get_or_create(&[("backend", backend)])
                .inc();
        }
    }

    /// How many lookups of `backend` were answered with `result` (for tests and `check`).
    pub fn key_lookups(&self, backend: &'static str, result: Lookup) -> u64 {
        self.key_lookups
            .get_or_create(&[("backend", backend), ("result", result.as_str())])
            .get()
    }

    pub fn key_fetch_errors(&self, backend: &'static str) -> u64 {
        self.key_fetch_errors
            .get_or_create(&[("backend", backend)])
            .get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_appear_in_the_exposition() {
        let m = Metrics::new();
        m.key_lookup("vault", Lookup::Stale);
        m.key_lookup("vault", Lookup::Stale);
        m.key_fetch("vault", 0.004, false);
        assert_eq!(m.key_lookups("vault", Lookup::Stale), 2);
        assert_eq!(m.key_fetch_errors("vault"), 1);
        let text = m.encode();
        assert!(
            text.contains("signet_key_cache_lookups_total{backend=\"vault\",result=\"stale\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("signet_key_fetch_duration_seconds_count{backend=\"vault\"} 1"),
            "{text}"
        );
    }
}
