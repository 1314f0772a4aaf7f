//! The load signal: one number, 0.0 (idle) to 1.0 (overloaded), shared between layers.
//!
//! The degradation gate publishes it; adaptive layers (the rate limiter's adaptive mode) read it and
//! tighten their limits as it rises. Users can set it too, from their own measurements. Reading and
//! writing are single relaxed atomic operations on the `f64`'s bits.
//!
//! ```
//! use palisade_core::signal::LoadSignal;
//!
//! let load = LoadSignal::new();
//! let reader = load.clone();
//! assert_eq!(reader.get(), 0.0);
//! load.set(0.75);
//! assert_eq!(reader.get(), 0.75);
//! load.set(7.0); // clamped
//! assert_eq!(reader.get(), 1.0);
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A shared load value in `[0, 1]`. Cheap to clone; every clone sees the same value.
#[derive(Clone, Default)]
pub struct LoadSignal {
    bits: Arc<AtomicU64>,
}

impl LoadSignal {
    /// A signal at 0.0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current load, in `[0, 1]`.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Relaxed))
    }

    /// Sets the load; values are clamped to `[0, 1]` and NaN counts as 0.
    pub fn set(&self, load: f64) {
        let v = if load.is_nan() {
            0.0
        } else {
            load.clamp(0.0, 1.0)
        };
        self.bits.store(v.to_bits(), Ordering::Relaxed);
    }
}

impl fmt::Debug for LoadSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LoadSignal").field(&self.get()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_and_shares() {
        let a = LoadSignal::new();
        let b = a.clone();
        a.set(-1.0);
        assert_eq!(b.get(), 0.0);
        a.set(f64::NAN);
        assert_eq!(b.get(), 0.0);
        a.set(0.3);
        assert_eq!(b.get(), 0.3);
        assert_eq!(format!("{b:?}"), "LoadSignal(0.3)");
    }
}
