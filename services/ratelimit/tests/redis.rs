//! The Redis storage against a real redis-server: atomic, all-or-nothing, refunds, TTLs,
//! and UNAVAILABLE (not a hang) when Redis is gone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use sluice_ratelimit::storage::{Mode, Op, Redis, Storage};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct RedisServer(Child, u16);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> RedisServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is missing: run scripts/setup.sh");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    RedisServer(child, port)
}

fn op(key: &str, limit: u64, hits: u64, mode: Mode) -> Op {
    Op {
        key: key.into(),
        limit,
        hits,
        mode,
        ttl: 60,
    }
}

#[tokio::test]
async fn redis_storage_is_atomic_and_fails_fast() {
    let server = start_redis();
    let url = format!("redis://127.0.0.1:{}", server.1);
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
    drop(server);
    let started = Instant::now();
    assert!(s.apply(&[op("t:d", 5, 1, Mode::Check)], 0).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}
