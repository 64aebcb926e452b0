//! The Redis storage against a real redis-server: atomic, all-or-nothing, refunds, TTLs,
//! and UNAVAILABLE (not a hang) when Redis is gone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use sluice_ratelimit::storage::{Mode, Op, Redis, Storage};
use std::time::{Duration, Instant};

fn op(key: &str, limit: u64, hits: u64, mode: Mode) -> Op {
    Op::new(key, limit, hits, mode, 60)
}

#[tokio::test]
async fn redis_storage_is_atomic_and_fails_fast() {
    let mut server = sluice_e2e::RedisServer::start().await;
    let url = server.url();
    let s = Storage::Redis(
        Redis::connect(&url, Duration::from_millis(200))
            .await
            .unwrap(),
    );
    let a = s
        .apply(
            &[op("t:a", 10, 6, Mode::Check), op("t:b", 5, 5, Mode::Check)],
            0,
        )
        .await
        .unwrap();
    assert_eq!((a.fits, a.used), (true, vec![6, 5]));
    let a = s
        .apply(
            &[op("t:a", 10, 1, Mode::Check), op("t:b", 5, 1, Mode::Check)],
            0,
        )
        .await
        .unwrap();
    assert_eq!(
        (a.fits, a.used),
        (false, vec![6, 5]),
        "a refused call must change nothing"
    );
    let a = s
        .apply(
            &[op("t:b", 5, 3, Mode::Refund), op("t:a", 10, 9, Mode::Force)],
            0,
        )
        .await
        .unwrap();
    assert_eq!(a.used, vec![2, 15]);

    // 200 concurrent calls against a limit of 20 (two connections' worth of clients).
    let s = std::sync::Arc::new(s);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                s.apply(&[op("t:c", 20, 1, Mode::Check)], 0)
                    .await
                    .unwrap()
                    .fits
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 20);

    // Redis goes away: an error within the timeout, not a hang.
    server.stop();
    let started = Instant::now();
    assert!(s.apply(&[op("t:d", 5, 1, Mode::Check)], 0).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}
