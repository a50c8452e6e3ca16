//! Rate limiting of the device's logs about guest and client misbehaviour, so a
//! hostile guest cannot flood the host log.
//!
//! Owns: a per-device budget of log lines per time window and the count of lines
//! it suppressed. It must not decide what is logged, only whether.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    per_window: u32,
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(per_window: u32, window: Duration) -> Self {
        LogLimiter {
            window,
            per_window,
            window_start: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether one more line may be logged now. When a new window starts after
    /// lines were suppressed, a summary line is logged first.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window_start) >= self.window {
            if self.suppressed > 0 {
                tracing::warn!(
                    device = "vsock",
                    suppressed = self.suppressed,
                    "suppressed log lines about guest or client errors"
                );
            }
            self.window_start = now;
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_per_window() {
        let mut l = LogLimiter::new(2, Duration::from_secs(1));
        let t0 = l.window_start;
        assert!(l.allow_at(t0));
        assert!(l.allow_at(t0));
        assert!(!l.allow_at(t0 + Duration::from_millis(500)));
        assert_eq!(l.suppressed, 1);
        assert!(l.allow_at(t0 + Duration::from_secs(1)));
        assert_eq!(l.suppressed, 0);
    }
}
