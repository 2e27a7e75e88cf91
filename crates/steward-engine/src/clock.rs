//! Time and ids: `steward_types::clock`, shared with orchestration.

pub use steward_types::clock::{Clock, SystemClock};
