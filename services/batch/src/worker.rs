//! Runs batches: validates their input, sends each line through the gateway as the batch's
//! owner at batch priority, and writes the output and error files.
//!
//! Idle capacity first: the number of lines in flight is a background-traffic window
//! ([`Pace`]): it grows while answers come at the pool's idle pace, shrinks when they slow
//! down (requests queue: interactive load rose) and halves when the gateway answers 429 or
//! 503 (its flow control, a rate limit, an engine queue). A refused line is not an error:
//! it is sent again.

use crate::model::{Batch, BatchError, FileObject, InputLine, Status, PURPOSE_OUTPUT};
use crate::pace::Pace;
use crate::store::{
    validation_errors, BlobStore, Event, Line, LineResult, LineState, Owner, Store, StoreError,
};
use crate::{new_id, now_millis, now_secs};
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};
use sluice_common::batch::{sign, BatchClaims};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct WorkerConfig {
    /// Completion webhooks, per tenant or key.
    pub webhooks: crate::webhook::Webhooks,
    /// The gateway's listener, e.g. `http://127.0.0.1:8080`.
    pub gateway: String,
    /// The secret shared with key-auth's `batch_secret`.
    pub secret: Vec<u8>,
    /// Most lines in flight at once.
    pub max_in_flight: usize,
    /// Most lines in an input file.
    pub max_lines: usize,
    pub lease_ms: u64,
    pub poll_ms: u64,
}

pub struct Worker {
    pub store: Store,
    pub blobs: Arc<dyn BlobStore>,
    pub config: WorkerConfig,
    pub client: reqwest::Client,
    /// This worker's lease name.
    pub id: String,
}

/// How a line's attempt ended.
enum Attempt {
    /// Answered (any status but a refusal); for a success, how long it took and its output
    /// tokens (the pace's congestion signal).
    Finished(LineResult, Option<(Duration, u64)>),
    /// Refused for now (429, 503, no connection): the line, to send again later.
    Refused(Line),
}

fn output_file_id(batch_id: &str, kind: &str) -> String {
    format!("file-{}-{kind}", batch_id.trim_start_matches("batch_"))
}

impl Worker {
    /// Work until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            let claimed = self
                .store
                .claim(&self.id, now_millis(), self.config.lease_ms)
                .await;
            match claimed {
                Ok(Some(id)) => {
                    // The lease is renewed on a timer while the batch is worked on (a line can
                    // take minutes); it lapses within `lease_ms` of this process dying, and
                    // another worker (or this one, restarted) resumes the batch.
                    let renewer = {
                        let (store, batch, owner) =
                            (self.store.clone(), id.clone(), self.id.clone());
                        let lease = self.config.lease_ms;
                        tokio::spawn(async move {
                            loop {
                                tokio::time::sleep(Duration::from_millis(lease / 3)).await;
                                match store.renew(&batch, &owner, now_millis() + lease).await {
                                    Ok(true) => {}
                                    _ => break,
                                }
                            }
                        })
                    };
                    if let Err(e) = self.work(&id).await {
                        eprintln!("sluice-batch: batch {id}: {e}");
                    }
                    renewer.abort();
                    let _ = self.store.release(&id, &self.id).await;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(self.config.poll_ms)).await,
                Err(e) => {
                    eprintln!("sluice-batch: claiming work: {e}");
                    tokio::time::sleep(Duration::from_millis(self.config.poll_ms * 10)).await;
                }
            }
        }
    }

    async fn renew(&self, id: &str) -> Result<bool, StoreError> {
        self.store
            .renew(id, &self.id, now_millis() + self.config.lease_ms)
            .await
    }

    /// Move batch `id` on as far as it goes while this worker holds its lease.
    async fn work(&self, id: &str) -> Result<(), StoreError> {
        let Some((mut batch, owner)) = self.store.batch_for_work(id).await? else {
            return Ok(());
        };
        if batch.status == Status::Validating {
            self.validate(&mut batch, &owner).await?;
        }
        if matches!(batch.status, Status::InProgress | Status::Cancelling) {
            self.send_lines(&mut batch, &owner).await?;
        }
        if matches!(
            batch.status,
            Status::Finalizing | Status::Cancelling | Status::InProgress
        ) && (self.store.unfinished(&batch.id, -1, 1).await?.is_empty()
            || batch.status == Status::Cancelling
            || batch.expired_at.is_some())
        {
            self.finalize(&mut batch, &owner).await?;
        }
        Ok(())
    }

    /// End the batch in its terminal status, if the store still has it in `from`: the
    /// owner's event (if the operator set a webhook) is queued in the same transaction.
    /// False when the API changed its status meanwhile.
    async fn end(&self, batch: &Batch, from: Status, owner: &Owner) -> Result<bool, StoreError> {
        let hooked = self
            .config
            .webhooks
            .for_owner(&owner.tenant, &owner.key_id)
            .is_some();
        // One event per batch, named after it: finalizing again after a crash queues none.
        let named = crate::webhook::event_type(batch.status)
            .filter(|_| hooked)
            .map(|kind| {
                let event_id = format!("evt_{}", batch.id.trim_start_matches("batch_"));
                let body = crate::webhook::event(&event_id, kind, &batch.id);
                (event_id, body)
            });
        let event = named.as_ref().map(|(event_id, body)| Event {
            event_id,
            owner,
            body,
        });
        self.store
            .save_batch_from(batch, from, event.as_ref())
            .await
    }

    /// Deliver due webhook events until the process ends.
    pub async fn deliver(self: Arc<Self>) {
        use crate::webhook::{backoff_secs, signature, MAX_ATTEMPTS};
        loop {
            let due = self
                .store
                .due_deliveries(now_secs(), 60, MAX_ATTEMPTS, 16)
                .await
                .unwrap_or_default();
            for d in due {
                let Some(hook) = self.config.webhooks.for_owner(&d.tenant, &d.key_id) else {
                    let _ = self.store.delivery_attempted(&d.event_id, true, 0).await;
                    continue;
                };
                let timestamp = now_secs();
                let delivered = match signature(&hook.secret, &d.event_id, timestamp, &d.body) {
                    Some(sig) => self
                        .client
                        .post(&hook.url)
                        .header("content-type", "application/json")
                        .header("webhook-id", &d.event_id)
                        .header("webhook-timestamp", timestamp.to_string())
                        .header("webhook-signature", sig)
                        .timeout(Duration::from_secs(10))
                        .body(d.body.clone())
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success()),
                    None => false,
                };
                let next = now_secs() + backoff_secs(d.attempts);
                if let Err(e) = self
                    .store
                    .delivery_attempted(&d.event_id, delivered, next)
                    .await
                {
                    eprintln!("sluice-batch: webhook {}: {e}", d.event_id);
                }
            }
            tokio::time::sleep(Duration::from_millis(self.config.poll_ms)).await;
        }
    }

    async fn validate(&self, batch: &mut Batch, owner: &Owner) -> Result<(), StoreError> {
        let input = self.blobs.get(&batch.input_file_id);
        let text = input
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let (lines, errors) = parse_input(&text, &batch.endpoint, self.config.max_lines);
        let now = now_secs();
        if !errors.is_empty() {
            batch.status = Status::Failed;
            batch.failed_at = Some(now);
            batch.errors = Some(validation_errors(errors));
            if !self.end(batch, Status::Validating, owner).await? {
                self.read_again(batch).await?;
            }
            return Ok(());
        }
        batch.status = Status::InProgress;
        batch.in_progress_at = Some(now);
        batch.request_counts.total = lines.len() as u64;
        if !self.store.start(batch, &lines).await? {
            // Cancelled while its file was read: nothing was started.
            self.read_again(batch).await?;
        }
        Ok(())
    }

    /// The batch as the store has it now (after the API changed its status); false if
    /// the store has it no more.
    async fn read_again(&self, batch: &mut Batch) -> Result<bool, StoreError> {
        Ok(match self.store.batch_for_work(&batch.id).await? {
            Some((now, _)) => {
                *batch = now;
                true
            }
            None => false,
        })
    }

    /// Send the batch's unfinished lines until none is left, the batch is cancelled or
    /// expires, or the lease is lost. A pipeline: a line goes out as soon as one is
    /// answered (within the pace's window), so the pool never idles between chunks; the
    /// batch's status, expiry and lease are checked every second meanwhile.
    async fn send_lines(&self, batch: &mut Batch, owner: &Owner) -> Result<(), StoreError> {
        const CHECK: Duration = Duration::from_secs(1);
        let mut pace = Pace::new(self.config.max_in_flight);
        let (batch_id, endpoint) = (batch.id.clone(), batch.endpoint.clone());
        let mut in_flight = FuturesUnordered::new();
        // Lines fetched and not sent yet (refused ones go back to its front), and the
        // highest index fetched: lines in flight are `sent` in the store, not fetched again.
        let mut queue: VecDeque<Line> = VecDeque::new();
        let mut cursor: i64 = -1;
        let mut exhausted = false;
        let mut next_check = Instant::now();
        let mut paused_until = Instant::now();
        loop {
            if Instant::now() >= next_check {
                next_check = Instant::now() + CHECK;
                // The API may have marked it cancelling meanwhile: no more lines go out,
                // those in flight finish (their answers are in the output file).
                if let Some((now, _)) = self.store.batch_for_work(&batch.id).await? {
                    batch.status = now.status;
                    batch.cancelling_at = now.cancelling_at;
                }
                if batch.status == Status::Cancelling {
                    return self.drain(&batch_id, in_flight).await;
                }
                if batch.expires_at.is_some_and(|t| now_secs() >= t) {
                    batch.expired_at = Some(now_secs());
                    self.store
                        .save_batch_from(batch, batch.status, None)
                        .await?;
                    return self.drain(&batch_id, in_flight).await;
                }
                if !self.renew(&batch.id).await? {
                    return Ok(());
                }
                batch.request_counts = self.store.counts(&batch.id).await?;
                self.store
                    .save_batch_from(batch, batch.status, None)
                    .await?;
            }
            while in_flight.len() < pace.window() && Instant::now() >= paused_until {
                if queue.is_empty() && !exhausted {
                    let limit = i64::try_from(pace.window() * 4).unwrap_or(256);
                    let more = self.store.unfinished(&batch.id, cursor, limit).await?;
                    exhausted = more.is_empty();
                    cursor = more.last().map_or(cursor, |l| l.index);
                    queue.extend(more);
                }
                let Some(line) = queue.pop_front() else { break };
                self.store.mark_sent(&batch.id, line.index).await?;
                in_flight.push(self.send(&batch_id, &endpoint, &owner.key_id, line));
            }
            if in_flight.is_empty() && queue.is_empty() && exhausted {
                batch.request_counts = self.store.counts(&batch.id).await?;
                self.store
                    .save_batch_from(batch, batch.status, None)
                    .await?;
                return Ok(());
            }
            // The next answer, or the next check, or the end of a pause after a refusal.
            let wake = if paused_until > Instant::now() {
                next_check.min(paused_until)
            } else {
                next_check
            };
            let attempt = tokio::select! {
                a = in_flight.next(), if !in_flight.is_empty() => a,
                () = tokio::time::sleep_until(wake.into()) => None,
            };
            match attempt {
                Some(Attempt::Finished(result, timing)) => {
                    self.store.finish_line(&batch.id, &result).await?;
                    match timing {
                        Some((elapsed, tokens)) => pace.answered(elapsed, tokens),
                        None => pace.error_answered(),
                    }
                }
                Some(Attempt::Refused(line)) => {
                    pace.refused();
                    paused_until = Instant::now() + Duration::from_millis(pace.pause_ms);
                    queue.push_front(line);
                }
                None => {}
            }
        }
    }

    /// Record the answers of the lines still in flight (a refused one stays unfinished).
    async fn drain(
        &self,
        batch_id: &str,
        mut in_flight: FuturesUnordered<impl std::future::Future<Output = Attempt>>,
    ) -> Result<(), StoreError> {
        while let Some(attempt) = in_flight.next().await {
            if let Attempt::Finished(result, _) = attempt {
                self.store.finish_line(batch_id, &result).await?;
            }
        }
        Ok(())
    }

    /// Send one line as `key_id` for batch `batch_id`, to the gateway's `endpoint`.
    async fn send(&self, batch_id: &str, endpoint: &str, key_id: &str, line: Line) -> Attempt {
        let claims = BatchClaims {
            key_id: key_id.to_string(),
            batch_id: batch_id.to_string(),
            custom_id: line.custom_id.clone(),
            expires_at: now_secs() + 300,
        };
        let Some(assertion) = sign(&claims, &self.config.secret) else {
            return Attempt::Refused(line);
        };
        let request_id = new_id("batch_req_");
        let url = format!("{}{endpoint}", self.config.gateway);
        let started = Instant::now();
        let sent = self
            .client
            .post(url)
            .header("authorization", format!("Bearer {assertion}"))
            .header("content-type", "application/json")
            .header("x-request-id", &request_id)
            .body(line.body.clone())
            .send()
            .await;
        let Ok(response) = sent else {
            return Attempt::Refused(line);
        };
        let status = response.status().as_u16();
        if status == 429 || status == 503 {
            return Attempt::Refused(line);
        }
        let bytes = response.bytes().await.unwrap_or_default();
        let elapsed = started.elapsed();
        let body: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        let ok = (200..300).contains(&status);
        // Output tokens as each API reports them (none for embeddings).
        let tokens = ["completion_tokens", "output_tokens"]
            .iter()
            .find_map(|k| body.get("usage")?.get(k)?.as_u64())
            .unwrap_or(0);
        let record = json!({
            "id": request_id,
            "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": null,
        });
        Attempt::Finished(
            LineResult {
                index: line.index,
                state: if ok {
                    LineState::Done
                } else {
                    LineState::Failed
                },
                record: record.to_string(),
            },
            ok.then_some((elapsed, tokens)),
        )
    }

    /// Write the output and error files and end the batch. Ids are the batch's own, so a
    /// crash here only means writing the same files again.
    /// End the batch: completed, or cancelled or expired with its unsent lines failed.
    /// Every status write is conditional on the status the worker read, so a cancel the
    /// API accepted meanwhile is never overwritten: the batch is read again and ends
    /// cancelled (a cancel moves a batch to `cancelling` once, so this loops at most twice).
    async fn finalize(&self, batch: &mut Batch, owner: &Owner) -> Result<(), StoreError> {
        loop {
            if batch.status.is_terminal() {
                return Ok(());
            }
            if self.finalize_from(batch, owner).await? || !self.read_again(batch).await? {
                return Ok(());
            }
        }
    }

    /// One attempt of `finalize`; false when the batch's status changed under it.
    async fn finalize_from(&self, batch: &mut Batch, owner: &Owner) -> Result<bool, StoreError> {
        let (terminal, code, message) = if batch.status == Status::Cancelling {
            (
                Status::Cancelled,
                "batch_cancelled",
                "The batch was cancelled before this request was sent.",
            )
        } else if batch.expired_at.is_some() {
            (
                Status::Expired,
                "batch_expired",
                "The batch expired before this request was sent.",
            )
        } else {
            (Status::Completed, "", "")
        };
        if terminal != Status::Completed {
            self.store
                .fail_unfinished(&batch.id, |custom_id| {
                    json!({"id": new_id("batch_req_"), "custom_id": custom_id, "response": null,
                           "error": {"code": code, "message": message}})
                    .to_string()
                })
                .await?;
        } else if batch.status == Status::InProgress {
            batch.status = Status::Finalizing;
            batch.finalizing_at = Some(now_secs());
            if !self
                .store
                .save_batch_from(batch, Status::InProgress, None)
                .await?
            {
                return Ok(false);
            }
        }
        let from = batch.status;
        let (done, failed) = self.store.records(&batch.id).await?;
        for (records, kind, slot) in [(done, "output", 0), (failed, "errors", 1)] {
            if records.is_empty() {
                continue;
            }
            let mut text = records.join("\n");
            text.push('\n');
            let file = FileObject {
                id: output_file_id(&batch.id, kind),
                object: "file",
                bytes: text.len() as u64,
                created_at: now_secs(),
                filename: format!("{}_{kind}.jsonl", batch.id),
                purpose: PURPOSE_OUTPUT.into(),
                status: "processed",
                expires_at: None,
            };
            self.blobs.put(&file.id, text.as_bytes())?;
            self.store.insert_file(&owner.tenant, &file).await?;
            if slot == 0 {
                batch.output_file_id = Some(file.id);
            } else {
                batch.error_file_id = Some(file.id);
            }
        }
        batch.request_counts = self.store.counts(&batch.id).await?;
        let now = now_secs();
        match terminal {
            Status::Cancelled => batch.cancelled_at = Some(now),
            Status::Expired => batch.expired_at = batch.expired_at.or(Some(now)),
            _ => batch.completed_at = Some(now),
        }
        batch.status = terminal;
        self.end(batch, from, owner).await
    }
}

/// The lines of an input file as `(custom_id, body JSON)`, or every reason it is refused.
pub fn parse_input(
    text: &str,
    endpoint: &str,
    max_lines: usize,
) -> (Vec<(String, String)>, Vec<BatchError>) {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let error = |code: &str, message: String, line: usize, param: Option<&str>| BatchError {
        code: code.into(),
        message,
        param: param.map(str::to_string),
        line: Some(line as u64),
    };
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if errors.len() >= 100 {
            break;
        }
        let line: InputLine = match serde_json::from_str(raw) {
            Ok(l) => l,
            Err(e) => {
                errors.push(error(
                    "invalid_json_line",
                    format!("Line {n} is not a valid request: {e}."),
                    n,
                    None,
                ));
                continue;
            }
        };
        if line.method != "POST" {
            errors.push(error(
                "invalid_method",
                format!("Line {n}: method must be POST."),
                n,
                Some("method"),
            ));
        }
        if line.url != endpoint {
            errors.push(error(
                "mismatched_endpoint",
                format!(
                    "Line {n}: url '{}' is not the batch's endpoint '{endpoint}'.",
                    line.url
                ),
                n,
                Some("url"),
            ));
        }
        if line.custom_id.is_empty() || !seen.insert(line.custom_id.clone()) {
            errors.push(error(
                "duplicate_custom_id",
                format!("Line {n}: custom_id must be present and unique in the file."),
                n,
                Some("custom_id"),
            ));
        }
        let model_ok = line
            .body
            .get("model")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty());
        if !line.body.is_object() || !model_ok {
            errors.push(error(
                "invalid_body",
                format!("Line {n}: body must be an object with a 'model'."),
                n,
                Some("body"),
            ));
        }
        if line.body.get("stream").and_then(Value::as_bool) == Some(true) {
            errors.push(error(
                "invalid_body",
                format!("Line {n}: streaming is not supported in a batch."),
                n,
                Some("body.stream"),
            ));
        }
        lines.push((line.custom_id, line.body.to_string()));
    }
    if errors.is_empty() && lines.is_empty() {
        errors.push(BatchError {
            code: "empty_file".into(),
            message: "The input file has no requests.".into(),
            param: None,
            line: None,
        });
    }
    if lines.len() > max_lines {
        errors.push(BatchError {
            code: "too_many_requests".into(),
            message: format!("The input file has more than {max_lines} requests."),
            param: None,
            line: None,
        });
    }
    (lines, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_lines_are_checked_before_anything_runs() {
        let ok = r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}"#;
        let (lines, errors) = parse_input(
            &format!("{ok}\n\n{}\n", ok.replace("\"a\"", "\"b\"")),
            "/v1/chat/completions",
            10,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(lines.len(), 2);
        let bad = [
            "not json".to_string(),
            ok.replace("POST", "GET"),
            ok.replace("/v1/chat/completions", "/v1/embeddings"),
            ok.to_string(), // duplicate of line 1 below
            ok.replace(r#""model":"m","#, ""),
            ok.replace(r#""messages":[]"#, r#""messages":[],"stream":true"#),
        ];
        // Each bad line its own custom_id, but the one meant as a duplicate.
        let bad: Vec<String> = bad
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if i == 3 {
                    l.clone()
                } else {
                    l.replace("\"a\"", &format!("\"x{i}\""))
                }
            })
            .collect();
        let text = format!("{ok}\n{}", bad.join("\n"));
        let (_, errors) = parse_input(&text, "/v1/chat/completions", 10);
        let codes: Vec<(&str, Option<u64>)> =
            errors.iter().map(|e| (e.code.as_str(), e.line)).collect();
        assert_eq!(
            codes,
            [
                ("invalid_json_line", Some(2)),
                ("invalid_method", Some(3)),
                ("mismatched_endpoint", Some(4)),
                ("duplicate_custom_id", Some(5)),
                ("invalid_body", Some(6)),
                ("invalid_body", Some(7)),
            ]
        );
        assert_eq!(
            parse_input("", "/v1/embeddings", 10).1[0].code,
            "empty_file"
        );
        assert_eq!(
            parse_input(
                &format!("{ok}\n{}", ok.replace("\"a\"", "\"b\"")),
                "/v1/chat/completions",
                1
            )
            .1[0]
                .code,
            "too_many_requests"
        );
    }

    /// A worker over a SQLite store and blobs in `dir`, its owner's webhook set (no
    /// delivery is attempted: only what it queues is looked at).
    async fn worker(dir: &std::path::Path) -> Worker {
        let url = format!("sqlite://{}", dir.join("b.db").display());
        let mut webhooks = crate::webhook::Webhooks::default();
        webhooks.tenants.insert(
            "t".into(),
            crate::webhook::Webhook {
                url: "http://127.0.0.1:9/hook".into(),
                secret: "a secret of sixteen bytes".into(),
            },
        );
        Worker {
            store: Store::open(&url).await.unwrap(),
            blobs: Arc::new(crate::store::DiskBlobs::new(&dir.join("blobs")).unwrap()),
            config: WorkerConfig {
                webhooks,
                gateway: "http://127.0.0.1:9".into(),
                secret: b"secret".to_vec(),
                max_in_flight: 4,
                max_lines: 10,
                lease_ms: 1_000,
                poll_ms: 10,
            },
            client: reqwest::Client::new(),
            id: "w".into(),
        }
    }

    /// A worker and batch `id` of owner `t`/`k`, stored as `validating`.
    async fn worker_with_batch(dir: &std::path::Path, id: &str) -> (Worker, Owner, Batch) {
        let w = worker(dir).await;
        let owner = Owner {
            tenant: "t".into(),
            key_id: "k".into(),
        };
        let batch = Batch::validating(
            id.into(),
            "/v1/chat/completions".into(),
            "file-1".into(),
            None,
            1,
        );
        w.store.insert_batch(&owner, &batch).await.unwrap();
        (w, owner, batch)
    }

    // The race a fresh-clone run found: every line answered, the API accepts a cancel,
    // and the worker, finalizing from what it read before, must not end it `completed`.
    #[tokio::test]
    async fn a_cancel_accepted_while_the_last_lines_finish_ends_the_batch_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let (w, owner, mut batch) = worker_with_batch(dir.path(), "batch_race").await;
        batch.status = Status::InProgress;
        assert!(w
            .store
            .start(
                &batch,
                &[("a".into(), "{}".into()), ("b".into(), "{}".into())]
            )
            .await
            .unwrap());
        for index in 0..2 {
            w.store.mark_sent(&batch.id, index).await.unwrap();
            let record = format!(r#"{{"custom_id":"{index}"}}"#);
            let result = LineResult {
                index,
                state: LineState::Done,
                record,
            };
            w.store.finish_line(&batch.id, &result).await.unwrap();
        }
        let cancelling = w.store.cancel("t", &batch.id, 2).await.unwrap().unwrap();
        assert_eq!(cancelling.status, Status::Cancelling);

        // The worker still holds the batch as `in_progress`.
        w.finalize(&mut batch, &owner).await.unwrap();
        let (stored, _) = w.store.batch_for_work(&batch.id).await.unwrap().unwrap();
        assert_eq!(stored.status, Status::Cancelled);
        assert_eq!(stored.cancelling_at, Some(2), "the API's cancel kept");
        assert!(stored.cancelled_at.is_some() && stored.completed_at.is_none());
        assert_eq!(
            (
                stored.request_counts.completed,
                stored.request_counts.failed
            ),
            (2, 0),
            "answered lines stay answered"
        );
        assert!(stored.output_file_id.is_some());
        // One event, and it says what the batch became.
        let events = w
            .store
            .due_deliveries(u64::MAX / 2, 60, 5, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert!(
            events[0].body.contains("batch.cancelled"),
            "{}",
            events[0].body
        );
    }

    #[tokio::test]
    async fn a_batch_cancelled_while_its_file_is_read_is_not_started() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _owner, mut batch) = worker_with_batch(dir.path(), "batch_early").await;
        w.store.cancel("t", &batch.id, 2).await.unwrap();
        batch.status = Status::InProgress;
        assert!(!w
            .store
            .start(&batch, &[("a".into(), "{}".into())])
            .await
            .unwrap());
        assert!(w
            .store
            .unfinished(&batch.id, -1, 10)
            .await
            .unwrap()
            .is_empty());
        let (stored, _) = w.store.batch_for_work(&batch.id).await.unwrap().unwrap();
        assert_eq!(stored.status, Status::Cancelling);
    }
}
