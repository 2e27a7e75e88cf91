//! What the tests of every crate share, so none keeps a copy: a fresh store on either backend
//! (a new SQLite file, or a new PostgreSQL schema on the test database) and a clock the test
//! moves by hand. A dev-dependency only; nothing here ships in the binary.

pub mod clock;
pub mod store;

pub use clock::ManualClock;
pub use store::{pg_base, Backend, FreshStore};
