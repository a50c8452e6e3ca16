//! Emulated devices. Every device here sits on the guest boundary: whatever the
//! guest writes is hostile, and a bad request fails that request or that device,
//! never the VMM.

pub mod boot_marker;
pub mod bus;
pub mod legacy;
pub mod virtio;

/// Bounds how many warnings one device logs because of guest behaviour: the
/// guest controls the rate, so after `budget` warnings the device goes quiet
/// (saying so once) and only counts.
#[derive(Debug)]
pub struct GuestLogLimit {
    remaining: u32,
    suppressed: u64,
}

impl GuestLogLimit {
    pub const fn new(budget: u32) -> Self {
        GuestLogLimit {
            remaining: budget,
            suppressed: 0,
        }
    }

    /// Whether to log this warning.
    pub fn allow(&mut self) -> bool {
        match self.remaining {
            0 => {
                self.suppressed = self.suppressed.saturating_add(1);
                false
            }
            1 => {
                self.remaining = 0;
                tracing::warn!("further guest-caused warnings from this device are suppressed");
                true
            }
            _ => {
                self.remaining -= 1;
                true
            }
        }
    }

    /// Warnings not logged so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::GuestLogLimit;

    #[test]
    fn log_limit_counts_past_the_budget() {
        let mut limit = GuestLogLimit::new(2);
        assert!(limit.allow());
        assert!(limit.allow());
        assert!(!limit.allow());
        assert!(!limit.allow());
        assert_eq!(limit.suppressed(), 2);
        assert!(!GuestLogLimit::new(0).allow());
    }
}
