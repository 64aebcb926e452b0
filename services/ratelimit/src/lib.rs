//! `sluice-ratelimit`: the Envoy RLS v3 gRPC service behind Sluice's global limits, and a
//! drop-in for Envoy's native ratelimit filter with an envoyproxy/ratelimit limits file.

pub mod limits;
pub mod service;
pub mod storage;
