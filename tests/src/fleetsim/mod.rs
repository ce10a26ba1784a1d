//! The fleet simulator behind `margo-fleetsim`: many real agents in one
//! process against a real manager process, and the benchmarks built on it.
//!
//! Benchmarks report; they never fail on timings. Every number comes from
//! what the manager stored (its status API) or from `/proc` of the measured
//! process, never from the simulated agents' own view.

pub mod fanout;
pub mod footprint;
pub mod harness;
pub mod ingest;
pub mod machine;
pub mod procstat;
pub mod report;
pub mod rlimit;
pub mod sim;
pub mod storm;
pub mod wire;
