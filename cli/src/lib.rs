//! The `sluice` CLI as a library, so the end-to-end harness uses the same code to render
//! Envoy configs and write key files as a user does, and usage reports are tested directly.

pub mod keyfile;
pub mod keys;
pub mod render;
pub mod usage;
