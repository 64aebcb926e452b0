//! The `sluice` CLI as a library, so the end-to-end harness uses the same code to render
//! Envoy configs and write key files as a user does.

pub mod keyfile;
pub mod keys;
pub mod render;
