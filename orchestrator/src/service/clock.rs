//! The service's clock: wall-clock time (epoch milliseconds) that a step of the system clock does
//! not move.
//!
//! Deadlines are wall-clock instants kept in sled, so that they survive restarts. While it runs,
//! cordon counts time on the monotonic clock from the wall clock it read at start: a step of the
//! system clock (an NTP correction after a bad boot clock, `date -s`, a VM resumed from a
//! snapshot) neither lifts an isolation early nor holds it later than the step, and each step is
//! said once, with its size. NTP's gradual slewing reaches the monotonic clock too, so cordon
//! keeps pace with a disciplined clock; after a restart it starts again from the wall clock.
//!
//! Tests step the wall clock without touching the machine's: `CORDON_CLOCK_OFFSET_FILE` names a
//! file holding a signed offset in milliseconds added to every wall-clock reading.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use super::events::WallClockStepped;

/// A difference between the wall clock and cordon's clock above this is a step worth saying.
pub(super) const STEP_MS: i64 = 1_000;

/// The wall clock at the first reading, and when that was on the monotonic clock.
static ANCHOR: OnceLock<(i64, Instant)> = OnceLock::new();

/// The last step said (wall clock minus cordon's clock), so that each is said once.
static SAID_STEP_MS: AtomicI64 = AtomicI64::new(0);

/// The system's wall clock in epoch milliseconds, with the test offset if one is configured.
fn wall_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let wall = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
    wall.saturating_add(test_offset_ms())
}

fn test_offset_ms() -> i64 {
    let Some(path) = std::env::var_os("CORDON_CLOCK_OFFSET_FILE") else { return 0 };
    std::fs::read_to_string(path).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(0)
}

/// Now, in epoch milliseconds, on cordon's clock.
pub fn now_ms() -> i64 {
    let (wall, at) = ANCHOR.get_or_init(|| (wall_ms(), Instant::now()));
    wall.saturating_add(i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
}

/// Compares the wall clock with cordon's and says a new step once (called on every tick).
pub fn check_for_step() {
    let ours = now_ms();
    let step = wall_ms().saturating_sub(ours);
    let said = SAID_STEP_MS.load(Ordering::Relaxed);
    if (step - said).abs() <= STEP_MS {
        return;
    }
    SAID_STEP_MS.store(step, Ordering::Relaxed);
    WallClockStepped { step_ms: step }.emit();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_moves_forward_with_the_monotonic_clock() {
        let first = super::now_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = super::now_ms();
        assert!((20..1_000).contains(&(second - first)), "{first} then {second}");
    }
}
