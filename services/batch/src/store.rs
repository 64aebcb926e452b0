//! Durable state: files' metadata, batches and their lines, in an embedded SQLite file
//! (one file, no server to run) or in PostgreSQL (several replicas sharing the work); file
//! contents behind [`BlobStore`]. One set of SQL serves both (sqlx's `Any` driver:
//! `$N` parameters, `ON CONFLICT`, `CASE` sums, `BIGINT` columns, which both accept).
//!
//! Every step of a batch is a row update, so a service killed at any moment resumes from
//! the rows: a batch is worked on by whoever holds its lease (a time-limited claim a
//! worker renews), so a dead worker's batches are picked up when their lease runs out.

use crate::model::{Batch, BatchErrors, FileObject, RequestCounts, Status};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("file storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where file contents live: local disk by default; an object store can implement it.
pub trait BlobStore: Send + Sync {
    fn put(&self, id: &str, bytes: &[u8]) -> Result<()>;
    fn get(&self, id: &str) -> Result<Vec<u8>>;
    fn delete(&self, id: &str) -> Result<()>;
}

/// Files under one directory, named by id, written whole (temporary file, then rename).
pub struct DiskBlobs {
    dir: PathBuf,
}

impl DiskBlobs {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &str) -> Result<PathBuf> {
        // Ids are ours (`file-<hex>`), never a client's path; refuse anything else.
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(StoreError::Corrupt(format!("bad file id {id:?}")));
        }
        Ok(self.dir.join(id))
    }
}

impl BlobStore for DiskBlobs {
    fn put(&self, id: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(id)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.path(id)?)?)
    }

    fn delete(&self, id: &str) -> Result<()> {
        match std::fs::remove_file(self.path(id)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// A line's progress. `Sent` survives a crash: the line is sent again (the gateway's usage
/// log keeps one record per batch line, see docs/batch.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineState {
    Pending,
    Sent,
    Done,
    Failed,
}

impl LineState {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// A line to run: its index in the input file, its id and body.
#[derive(Debug, Clone)]
pub struct Line {
    pub index: i64,
    pub custom_id: String,
    pub body: String,
}

/// A finished line: its index, id and the output-file record.
#[derive(Debug, Clone)]
pub struct LineResult {
    pub index: i64,
    pub state: LineState,
    pub record: String,
}

/// Who owns a batch, for the worker: the key its lines run as.
#[derive(Debug, Clone)]
pub struct Owner {
    pub tenant: String,
    pub key_id: String,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
  bytes BIGINT NOT NULL, created_at BIGINT NOT NULL, seq BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS files_by_tenant ON files (tenant, seq);
CREATE TABLE IF NOT EXISTS batches (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, key_id TEXT NOT NULL, seq BIGINT NOT NULL,
  body TEXT NOT NULL, status TEXT NOT NULL,
  lease_owner TEXT, lease_until BIGINT NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS batches_by_tenant ON batches (tenant, seq);
CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status, lease_until);
CREATE TABLE IF NOT EXISTS lines (
  batch_id TEXT NOT NULL, idx BIGINT NOT NULL, custom_id TEXT NOT NULL, body TEXT NOT NULL,
  state TEXT NOT NULL, record TEXT, PRIMARY KEY (batch_id, idx));
CREATE INDEX IF NOT EXISTS lines_by_state ON lines (batch_id, state, idx);
CREATE TABLE IF NOT EXISTS deliveries (
  event_id TEXT PRIMARY KEY, batch_id TEXT NOT NULL, tenant TEXT NOT NULL, key_id TEXT NOT NULL,
  body TEXT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0, next_at BIGINT NOT NULL DEFAULT 0,
  done BIGINT NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (done, next_at);
";

/// A batch's terminal event for its owner's webhook, queued with the status it reports.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub event_id: &'a str,
    pub owner: &'a Owner,
    pub body: &'a str,
}

/// A webhook event waiting to be delivered.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: String,
    pub tenant: String,
    pub key_id: String,
    pub body: String,
    pub attempts: i64,
}

fn batch_of(row: &AnyRow) -> Result<Batch> {
    let body: String = row.try_get("body")?;
    serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn file_of(row: &AnyRow) -> Result<FileObject> {
    Ok(FileObject {
        id: row.try_get("id")?,
        object: "file",
        bytes: u64::try_from(row.try_get::<i64, _>("bytes")?).unwrap_or(0),
        created_at: u64::try_from(row.try_get::<i64, _>("created_at")?).unwrap_or(0),
        filename: row.try_get("filename")?,
        purpose: row.try_get("purpose")?,
        status: "processed",
        expires_at: None,
    })
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Open the database at `url`, creating its tables if needed: `sqlite:///path/batch.db`
    /// (the file created if missing) or `postgres://user@host/db` (shared by replicas).
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 8 })
            .after_connect(|conn, _| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        // One writer at a time: wait for it rather than fail. In WAL mode,
                        // NORMAL syncs at checkpoints, not at every commit: a killed
                        // process loses nothing (the WAL is in the OS's hands), a power
                        // cut may lose the last commits (a line is then sent again, never
                        // lost), and a line's two writes stop costing two disk flushes.
                        for pragma in ["PRAGMA busy_timeout = 10000", "PRAGMA synchronous = NORMAL"]
                        {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if sqlite {
            // Readers never wait on the writer; a commit survives a killed process. (The
            // mode is the file's, kept once set.)
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
            sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        } else {
            // Replicas starting together: one creates the tables, the others wait for it
            // (`IF NOT EXISTS` alone races in PostgreSQL's catalog).
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(7291)")
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
            tx.commit().await?;
        }
        Ok(Self { pool })
    }

    pub async fn insert_file(&self, tenant: &str, file: &FileObject) -> Result<()> {
        sqlx::query(
            // The listing order: the next number, taken inside the insert. Two replicas'
            // uploads at once may share one; listings order by (seq, id), so a tie is
            // still a strict order. An output file written again (a finalize interrupted by
            // a crash) keeps its place.
            "INSERT INTO files (id, tenant, filename, purpose, bytes, created_at, seq)
             VALUES ($1, $2, $3, $4, $5, $6, (SELECT COALESCE(MAX(seq), 0) + 1 FROM files))
             ON CONFLICT (id) DO UPDATE SET bytes = excluded.bytes, created_at = excluded.created_at",
        )
        .bind(&file.id)
        .bind(tenant)
        .bind(&file.filename)
        .bind(&file.purpose)
        .bind(i64_of(file.bytes))
        .bind(i64_of(file.created_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A tenant's file; `None` for another tenant's, as for one that does not exist.
    pub async fn file(&self, tenant: &str, id: &str) -> Result<Option<FileObject>> {
        let row = sqlx::query("SELECT * FROM files WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(file_of).transpose()
    }

    /// A tenant's files, newest first, after the file `after` (pagination), at most `limit`;
    /// and whether there are more.
    pub async fn files(
        &self,
        tenant: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<FileObject>, bool)> {
        let rows = sqlx::query(
            "SELECT * FROM files f WHERE tenant = $1
             AND (CAST($2 AS TEXT) IS NULL OR purpose = $2)
             AND (CAST($3 AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM files a
                  WHERE a.id = $3 AND a.tenant = $1
                  AND (f.seq < a.seq OR (f.seq = a.seq AND f.id < a.id))))
             ORDER BY seq DESC, id DESC LIMIT $4",
        )
        .bind(tenant)
        .bind(purpose)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut files = rows.iter().map(file_of).collect::<Result<Vec<_>>>()?;
        let more = files.len() > usize::try_from(limit).unwrap_or(0);
        files.truncate(usize::try_from(limit).unwrap_or(0));
        Ok((files, more))
    }

    pub async fn delete_file(&self, tenant: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM files WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn insert_batch(&self, owner: &Owner, batch: &Batch) -> Result<()> {
        let body = serde_json::to_string(batch).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO batches (id, tenant, key_id, seq, body, status)
             VALUES ($1, $2, $3, (SELECT COALESCE(MAX(seq), 0) + 1 FROM batches), $4, $5)",
        )
        .bind(&batch.id)
        .bind(&owner.tenant)
        .bind(&owner.key_id)
        .bind(body)
        .bind(batch.status.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A tenant's batch; `None` for another tenant's.
    pub async fn batch(&self, tenant: &str, id: &str) -> Result<Option<Batch>> {
        let row = sqlx::query("SELECT body FROM batches WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(batch_of).transpose()
    }

    /// A batch and its owner, for the worker that holds its lease.
    pub async fn batch_for_work(&self, id: &str) -> Result<Option<(Batch, Owner)>> {
        let row = sqlx::query("SELECT body, tenant, key_id FROM batches WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some((
                batch_of(&row)?,
                Owner {
                    tenant: row.try_get("tenant")?,
                    key_id: row.try_get("key_id")?,
                },
            ))),
        }
    }

    pub async fn batches(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<Batch>, bool)> {
        let rows = sqlx::query(
            "SELECT body FROM batches b WHERE tenant = $1
             AND (CAST($2 AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM batches a
                  WHERE a.id = $2 AND a.tenant = $1
                  AND (b.seq < a.seq OR (b.seq = a.seq AND b.id < a.id))))
             ORDER BY seq DESC, id DESC LIMIT $3",
        )
        .bind(tenant)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut batches = rows.iter().map(batch_of).collect::<Result<Vec<_>>>()?;
        let more = batches.len() > usize::try_from(limit).unwrap_or(0);
        batches.truncate(usize::try_from(limit).unwrap_or(0));
        Ok((batches, more))
    }

    /// Write a batch's new state (whoever changes it holds its lease, or is the API
    /// marking it cancelling).
    /// Save the batch, in its status now, if the store still has it in `from`: the API may
    /// have marked it cancelling meanwhile, and that must not be overwritten (the worker
    /// reads it again and ends the batch cancelled). With `event`, the owner's webhook
    /// event is queued in the same transaction, so a terminal status and its event are
    /// stored together or not at all. False when the status had changed.
    pub async fn save_batch_from(
        &self,
        batch: &Batch,
        from: Status,
        event: Option<&Event<'_>>,
    ) -> Result<bool> {
        let body = serde_json::to_string(batch).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        let saved =
            sqlx::query("UPDATE batches SET body = $1, status = $2 WHERE id = $3 AND status = $4")
                .bind(body)
                .bind(batch.status.as_str())
                .bind(&batch.id)
                .bind(from.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        if !saved {
            return Ok(false);
        }
        if let Some(event) = event {
            // Once: the same event id again is ignored, so a batch finalized twice after
            // a crash notifies once.
            sqlx::query(
                "INSERT INTO deliveries (event_id, batch_id, tenant, key_id, body) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(event.event_id)
            .bind(&batch.id)
            .bind(&event.owner.tenant)
            .bind(&event.owner.key_id)
            .bind(event.body)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Ask a batch to stop: `cancelling` unless it already ended. The batch as it is now.
    pub async fn cancel(&self, tenant: &str, id: &str, now: u64) -> Result<Option<Batch>> {
        loop {
            let row = sqlx::query("SELECT body FROM batches WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let mut batch = batch_of(&row)?;
            if batch.status.is_terminal() || batch.status == Status::Cancelling {
                return Ok(Some(batch));
            }
            let from = batch.status;
            batch.status = Status::Cancelling;
            batch.cancelling_at = Some(now);
            // Conditional on the status read: a worker that moved the batch on meanwhile
            // (started it, finalized it) is not overwritten; read it again and decide anew.
            if self.save_batch_from(&batch, from, None).await? {
                return Ok(Some(batch));
            }
        }
    }

    /// Claim the oldest batch with work left whose lease is free, for `lease_ms`.
    pub async fn claim(&self, owner: &str, now_ms: u64, lease_ms: u64) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT id FROM batches WHERE status IN ('validating', 'in_progress', 'cancelling', 'finalizing')
             AND lease_until < $1 ORDER BY seq, id LIMIT 1",
        )
        .bind(i64_of(now_ms))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: String = row.try_get("id")?;
        // Only one claimant wins: the update checks the lease is still free (PostgreSQL
        // re-checks the condition after waiting for a concurrent claimant's row lock).
        let won = sqlx::query(
            "UPDATE batches SET lease_owner = $1, lease_until = $2 WHERE id = $3 AND lease_until < $4",
        )
        .bind(owner)
        .bind(i64_of(now_ms + lease_ms))
        .bind(&id)
        .bind(i64_of(now_ms))
        .execute(&self.pool)
        .await?;
        Ok((won.rows_affected() == 1).then_some(id))
    }

    /// Extend a lease this worker holds; false when it lost it.
    pub async fn renew(&self, id: &str, owner: &str, until_ms: u64) -> Result<bool> {
        let done =
            sqlx::query("UPDATE batches SET lease_until = $1 WHERE id = $2 AND lease_owner = $3")
                .bind(i64_of(until_ms))
                .bind(id)
                .bind(owner)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn release(&self, id: &str, owner: &str) -> Result<()> {
        sqlx::query("UPDATE batches SET lease_until = 0 WHERE id = $1 AND lease_owner = $2")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Store a validated batch's lines and move it to `in_progress`, in one transaction
    /// (a crash leaves it validating, with no lines, to be validated again).
    pub async fn start(&self, batch: &Batch, lines: &[(String, String)]) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM lines WHERE batch_id = $1")
            .bind(&batch.id)
            .execute(&mut *tx)
            .await?;
        // Many rows per statement: one round trip per chunk, not per line (a PostgreSQL
        // server is a network hop away).
        const ROWS: usize = 200;
        let numbered: Vec<(i64, &(String, String))> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| (i64::try_from(i).unwrap_or(i64::MAX), l))
            .collect();
        for chunk in numbered.chunks(ROWS) {
            let mut sql =
                String::from("INSERT INTO lines (batch_id, idx, custom_id, body, state) VALUES ");
            for n in 0..chunk.len() {
                let p = n * 4;
                if n > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, 'pending')",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4
                ));
            }
            let mut query = sqlx::query(&sql);
            for (i, (custom_id, body)) in chunk {
                query = query.bind(&batch.id).bind(*i).bind(custom_id).bind(body);
            }
            query.execute(&mut *tx).await?;
        }
        let body = serde_json::to_string(batch).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // Only from `validating`: a batch cancelled while its file was read is not
        // started (dropping the transaction rolls its lines back).
        let started = sqlx::query(
            "UPDATE batches SET body = $1, status = $2 WHERE id = $3 AND status = 'validating'",
        )
        .bind(body)
        .bind(batch.status.as_str())
        .bind(&batch.id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if started {
            tx.commit().await?;
        }
        Ok(started)
    }

    /// Lines not finished yet (pending, or sent before a crash) after index `after`, in
    /// input order.
    pub async fn unfinished(&self, batch_id: &str, after: i64, limit: i64) -> Result<Vec<Line>> {
        let rows = sqlx::query(
            "SELECT idx, custom_id, body FROM lines WHERE batch_id = $1 AND state IN ('pending', 'sent')
             AND idx > $2 ORDER BY idx LIMIT $3",
        )
        .bind(batch_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Line {
                    index: r.try_get("idx")?,
                    custom_id: r.try_get("custom_id")?,
                    body: r.try_get("body")?,
                })
            })
            .collect()
    }

    pub async fn mark_sent(&self, batch_id: &str, index: i64) -> Result<()> {
        sqlx::query(
            "UPDATE lines SET state = 'sent' WHERE batch_id = $1 AND idx = $2 AND state = 'pending'",
        )
        .bind(batch_id)
        .bind(index)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Record a line's outcome once (a line already finished keeps its first outcome).
    pub async fn finish_line(&self, batch_id: &str, result: &LineResult) -> Result<()> {
        sqlx::query(
            "UPDATE lines SET state = $1, record = $2 WHERE batch_id = $3 AND idx = $4 AND state IN ('pending', 'sent')",
        )
        .bind(result.state.as_str())
        .bind(&result.record)
        .bind(batch_id)
        .bind(result.index)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Lines completed and failed so far.
    pub async fn counts(&self, batch_id: &str) -> Result<RequestCounts> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total,
                    COALESCE(SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END), 0) AS done,
                    COALESCE(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0) AS failed
             FROM lines WHERE batch_id = $1",
        )
        .bind(batch_id)
        .fetch_one(&self.pool)
        .await?;
        let n =
            |c: &str| -> Result<u64> { Ok(u64::try_from(row.try_get::<i64, _>(c)?).unwrap_or(0)) };
        Ok(RequestCounts {
            total: n("total")?,
            completed: n("done")?,
            failed: n("failed")?,
        })
    }

    /// The finished lines' records, in input order: `(done, failed)` (each custom id once).
    pub async fn records(&self, batch_id: &str) -> Result<(Vec<String>, Vec<String>)> {
        let rows = sqlx::query(
            "SELECT state, record FROM lines WHERE batch_id = $1 AND state IN ('done', 'failed') ORDER BY idx",
        )
        .bind(batch_id)
        .fetch_all(&self.pool)
        .await?;
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for r in rows {
            let state: String = r.try_get("state")?;
            let record: Option<String> = r.try_get("record")?;
            let record = record.unwrap_or_default();
            if state == "done" {
                done.push(record);
            } else {
                failed.push(record);
            }
        }
        Ok((done, failed))
    }

    /// Give every unfinished line `record` as a failure (a batch expired or cancelled).
    pub async fn fail_unfinished(
        &self,
        batch_id: &str,
        record_for: impl Fn(&str) -> String,
    ) -> Result<()> {
        for line in self.unfinished(batch_id, -1, i64::MAX).await? {
            let result = LineResult {
                index: line.index,
                state: LineState::Failed,
                record: record_for(&line.custom_id),
            };
            self.finish_line(batch_id, &result).await?;
        }
        Ok(())
    }
}

impl Store {
    /// Claim deliveries that are due (each for `hold_secs`, so another worker does not send
    /// it meanwhile), at most `limit`.
    pub async fn due_deliveries(
        &self,
        now: u64,
        hold_secs: u64,
        max_attempts: i64,
        limit: i64,
    ) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(
            "SELECT event_id, tenant, key_id, body, attempts FROM deliveries
             WHERE done = 0 AND next_at <= $1 AND attempts < $2 ORDER BY next_at LIMIT $3",
        )
        .bind(i64_of(now))
        .bind(max_attempts)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let event_id: String = r.try_get("event_id")?;
            let won = sqlx::query("UPDATE deliveries SET next_at = $1 WHERE event_id = $2 AND next_at <= $3 AND done = 0")
                .bind(i64_of(now + hold_secs))
                .bind(&event_id)
                .bind(i64_of(now))
                .execute(&self.pool)
                .await?;
            if won.rows_affected() == 1 {
                out.push(Delivery {
                    event_id,
                    tenant: r.try_get("tenant")?,
                    key_id: r.try_get("key_id")?,
                    body: r.try_get("body")?,
                    attempts: r.try_get("attempts")?,
                });
            }
        }
        Ok(out)
    }

    /// Record an attempt: delivered, or to be tried again at `next_at`.
    pub async fn delivery_attempted(
        &self,
        event_id: &str,
        delivered: bool,
        next_at: u64,
    ) -> Result<()> {
        sqlx::query("UPDATE deliveries SET attempts = attempts + 1, done = $1, next_at = $2 WHERE event_id = $3")
            .bind(i64::from(delivered))
            .bind(i64_of(next_at))
            .bind(event_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Errors of a batch whose input was refused.
pub fn validation_errors(errors: Vec<crate::model::BatchError>) -> BatchErrors {
    BatchErrors {
        object: "list".into(),
        data: errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Batch, Status};

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("b.db").display());
        (Store::open(&url).await.unwrap(), dir)
    }

    fn file(id: &str) -> FileObject {
        FileObject {
            id: id.into(),
            object: "file",
            bytes: 1,
            created_at: 1,
            filename: "f".into(),
            purpose: "batch".into(),
            status: "processed",
            expires_at: None,
        }
    }

    fn batch(id: &str) -> Batch {
        Batch::validating(
            id.into(),
            "/v1/chat/completions".into(),
            "file-1".into(),
            None,
            1,
        )
    }

    #[tokio::test]
    async fn lists_page_newest_first_within_a_tenant() {
        let (s, _dir) = store().await;
        for id in ["file-a", "file-b", "file-c"] {
            s.insert_file("t1", &file(id)).await.unwrap();
        }
        s.insert_file("t2", &file("file-x")).await.unwrap();
        let (page, more) = s.files("t1", None, None, 2).await.unwrap();
        let ids: Vec<&str> = page.iter().map(|f| f.id.as_str()).collect();
        assert_eq!((ids, more), (vec!["file-c", "file-b"], true));
        let (page, more) = s.files("t1", None, Some("file-b"), 2).await.unwrap();
        let ids: Vec<&str> = page.iter().map(|f| f.id.as_str()).collect();
        assert_eq!((ids, more), (vec!["file-a"], false));
        assert!(
            s.file("t2", "file-a").await.unwrap().is_none(),
            "another tenant's"
        );
        assert!(!s.delete_file("t2", "file-a").await.unwrap());
        assert!(s.delete_file("t1", "file-a").await.unwrap());
    }

    #[tokio::test]
    async fn one_worker_holds_a_batch_until_its_lease_lapses() {
        let (s, _dir) = store().await;
        let owner = Owner {
            tenant: "t".into(),
            key_id: "k".into(),
        };
        s.insert_batch(&owner, &batch("batch_1")).await.unwrap();
        assert_eq!(
            s.claim("w1", 1_000, 500).await.unwrap().as_deref(),
            Some("batch_1")
        );
        assert_eq!(s.claim("w2", 1_200, 500).await.unwrap(), None, "held by w1");
        assert!(s.renew("batch_1", "w1", 2_000).await.unwrap());
        assert_eq!(s.claim("w2", 1_900, 500).await.unwrap(), None, "renewed");
        assert_eq!(
            s.claim("w2", 2_001, 500).await.unwrap().as_deref(),
            Some("batch_1")
        );
        assert!(
            !s.renew("batch_1", "w1", 3_000).await.unwrap(),
            "w1 lost it"
        );
    }

    #[tokio::test]
    async fn a_line_keeps_its_first_outcome() {
        let (s, _dir) = store().await;
        let owner = Owner {
            tenant: "t".into(),
            key_id: "k".into(),
        };
        let mut b = batch("batch_2");
        s.insert_batch(&owner, &b).await.unwrap();
        b.status = Status::InProgress;
        s.start(&b, &[("a".into(), "{}".into()), ("b".into(), "{}".into())])
            .await
            .unwrap();
        s.mark_sent("batch_2", 0).await.unwrap();
        let done = |state, record: &str| LineResult {
            index: 0,
            state,
            record: record.into(),
        };
        s.finish_line("batch_2", &done(LineState::Done, "first"))
            .await
            .unwrap();
        s.finish_line("batch_2", &done(LineState::Failed, "second"))
            .await
            .unwrap();
        let (ok, failed) = s.records("batch_2").await.unwrap();
        assert_eq!((ok, failed), (vec!["first".to_string()], vec![]));
        let left = s.unfinished("batch_2", -1, 10).await.unwrap();
        assert_eq!(
            left.iter()
                .map(|l| l.custom_id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        let counts = s.counts("batch_2").await.unwrap();
        assert_eq!((counts.total, counts.completed, counts.failed), (2, 1, 0));
    }
}
