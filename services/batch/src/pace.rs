//! How many batch lines the worker keeps in flight: a background-traffic controller in the
//! manner of LEDBAT (RFC 6817), which fills what foreground traffic leaves and yields as
//! soon as it sees queueing.
//!
//! - Each answer measures the line's time per output token. The lowest lately (the base
//!   delay: the pool's pace when nothing queues) is the reference, and the queueing delay
//!   is how much slower than it an answer is. The target allows `TARGET` of the base
//!   delay: below it the window grows, above it the window shrinks, in proportion to the
//!   distance and by at most one line per window of answers (one round trip), as LEDBAT
//!   moves its congestion window. Until the first answer over the target, it grows by one
//!   per answer (a slow start: a few round trips to fill an idle pool).
//! - A refusal (429, 503, no connection: a rate limit, the gateway's queue, an engine's)
//!   halves the window and pauses, the pause doubling while refusals continue.
//! - The base delay is the minimum over the last `HISTORY` buckets of `BUCKET` answers, so
//!   a pool that got slower for good is learnt again.

use std::collections::VecDeque;
use std::time::Duration;

/// The queueing delay allowed, as a share of the base delay per token.
const TARGET: f64 = 0.5;
/// Answers per base-delay bucket, and buckets kept.
const BUCKET: u32 = 64;
const HISTORY: usize = 8;

#[derive(Debug)]
pub struct Pace {
    /// Lines in flight allowed, fractional (it moves by fractions of a line per answer).
    window: f64,
    max: f64,
    slow_start: bool,
    /// Wait before sending more (after refusals).
    pub pause_ms: u64,
    /// Lowest time per token (µs) of each recent bucket of answers, newest last.
    base: VecDeque<f64>,
    in_bucket: u32,
}

impl Pace {
    pub fn new(max: usize) -> Self {
        Self {
            window: 1.0,
            #[allow(clippy::cast_precision_loss)] // a window is far below 2^52
            max: max.max(1) as f64,
            slow_start: true,
            pause_ms: 0,
            base: VecDeque::new(),
            in_bucket: 0,
        }
    }

    /// Lines in flight allowed now.
    pub fn window(&self) -> usize {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 1..=max
        let w = self.window.floor().max(1.0) as usize;
        w
    }

    /// A line was answered after `elapsed`, with `tokens` output tokens.
    pub fn answered(&mut self, elapsed: Duration, tokens: u64) {
        self.pause_ms = 0;
        #[allow(clippy::cast_precision_loss)] // µs and tokens are far below 2^52
        let per_token = elapsed.as_micros() as f64 / (tokens as f64 + 1.0);
        if self.in_bucket == 0 || self.base.is_empty() {
            self.base.push_back(per_token);
            if self.base.len() > HISTORY {
                self.base.pop_front();
            }
        } else if let Some(last) = self.base.back_mut() {
            *last = last.min(per_token);
        }
        self.in_bucket = (self.in_bucket + 1) % BUCKET;
        let base = self.base.iter().copied().fold(f64::INFINITY, f64::min);
        let target = TARGET * base;
        let off_target = if target > 0.0 {
            ((target - (per_token - base)) / target).clamp(-1.0, 1.0)
        } else {
            1.0
        };
        if self.slow_start && off_target >= 0.0 {
            self.window += 1.0;
        } else {
            self.slow_start = false;
            self.window += off_target / self.window;
        }
        self.window = self.window.clamp(1.0, self.max);
    }

    /// A line was answered with an error (a 4xx of its own): it says nothing of the pool's
    /// pace, but the gateway took it.
    pub fn error_answered(&mut self) {
        self.pause_ms = 0;
        let step = if self.slow_start {
            1.0
        } else {
            1.0 / self.window
        };
        self.window = (self.window + step).min(self.max);
    }

    /// The gateway refused a line (it is sent again later).
    pub fn refused(&mut self) {
        self.slow_start = false;
        self.window = (self.window / 2.0).max(1.0);
        self.pause_ms = (self.pause_ms * 2).clamp(100, 5_000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn starts_fast_then_halves_on_refusal() {
        let mut p = Pace::new(8);
        for _ in 0..10 {
            p.answered(100 * MS, 9);
        }
        assert_eq!(
            p.window(),
            8,
            "slow start: one more per answer, up to the max"
        );
        p.refused();
        assert_eq!((p.window(), p.pause_ms), (4, 100));
        p.refused();
        assert_eq!((p.window(), p.pause_ms), (2, 200));
        // After a refusal, growth is one line per window of answers.
        p.answered(100 * MS, 9);
        assert_eq!((p.window(), p.pause_ms), (2, 0));
        p.answered(100 * MS, 9);
        p.answered(100 * MS, 9);
        assert_eq!(p.window(), 3);
    }

    #[test]
    fn yields_while_answers_queue_and_grows_back_when_they_do_not() {
        let mut p = Pace::new(64);
        for _ in 0..20 {
            p.answered(100 * MS, 9);
        }
        assert_eq!(p.window(), 21);
        // Interactive load arrives: the same lines take twice as long per token (a queue
        // of a whole base delay, twice the target): about one line less per window.
        for _ in 0..21 {
            p.answered(400 * MS, 19);
        }
        assert_eq!(p.window(), 19);
        for _ in 0..200 {
            p.answered(400 * MS, 19);
        }
        assert!(p.window() <= 12, "{}", p.window());
        // A longer answer at the base pace is not slow: time is per token.
        let w = p.window;
        p.answered(1_000 * MS, 99);
        assert!(p.window > w);
        // Within the target (queueing a quarter of the base): still growing, slower.
        let w = p.window;
        p.answered(125 * MS, 9);
        assert!((p.window - w - 0.5 / w).abs() < 1e-9, "half a step");
    }

    #[test]
    fn a_pool_slower_for_good_is_learnt_again() {
        let mut p = Pace::new(64);
        p.answered(10 * MS, 9);
        // From now on every answer is 10x slower: it shrinks at first, then, once the fast
        // answer's bucket has aged out, the slow pace is the base and the window grows.
        let mut low = f64::MAX;
        for _ in 0..(BUCKET as usize * HISTORY) {
            p.answered(100 * MS, 9);
            low = low.min(p.window);
        }
        assert_eq!(low, 1.0);
        let at_switch = p.window;
        for _ in 0..200 {
            p.answered(100 * MS, 9);
        }
        assert!(p.window > at_switch + 5.0, "{at_switch} -> {}", p.window);
    }
}
