//! Durable state: files' metadata, batches and their lines, in an embedded SQLite file
//! (one file, no server to run); file contents behind [`BlobStore`].
//!
//! Every step of a batch is a row update, so a service killed at any moment resumes from
//! the rows: a batch is worked on by whoever holds its lease (a time-limited claim a
//! worker renews), so a dead worker's batches are picked up when their lease runs out.

use crate::model::{Batch, BatchErrors, FileObject, RequestCounts, Status};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, SqlitePool};
use std::path::{Path, PathBuf};
use std::str::FromStr;

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
    pool: SqlitePool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
  bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS files_by_tenant ON files (tenant, seq);
CREATE TABLE IF NOT EXISTS batches (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, key_id TEXT NOT NULL, seq INTEGER NOT NULL,
  body TEXT NOT NULL, status TEXT NOT NULL,
  lease_owner TEXT, lease_until INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS batches_by_tenant ON batches (tenant, seq);
CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status, lease_until);
CREATE TABLE IF NOT EXISTS lines (
  batch_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT NOT NULL, body TEXT NOT NULL,
  state TEXT NOT NULL, record TEXT, PRIMARY KEY (batch_id, idx));
CREATE INDEX IF NOT EXISTS lines_by_state ON lines (batch_id, state, idx);
CREATE TABLE IF NOT EXISTS deliveries (
  event_id TEXT PRIMARY KEY, batch_id TEXT NOT NULL, tenant TEXT NOT NULL, key_id TEXT NOT NULL,
  body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL DEFAULT 0,
  done INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (done, next_at);
";

/// A webhook event waiting to be delivered.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: String,
    pub tenant: String,
    pub key_id: String,
    pub body: String,
    pub attempts: i64,
}

fn batch_of(row: &SqliteRow) -> Result<Batch> {
    let body: String = row.try_get("body")?;
    serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn file_of(row: &SqliteRow) -> Result<FileObject> {
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
    /// Open (creating if needed) the database at `url` (`sqlite:///path/to/batch.db`).
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            // Readers never wait on the writer; a commit survives a killed process.
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn insert_file(&self, tenant: &str, file: &FileObject) -> Result<()> {
        sqlx::query(
            // The listing order: the next number, taken inside the insert (SQLite runs one
            // write at a time, so two uploads never share one).
            "INSERT OR REPLACE INTO files (id, tenant, filename, purpose, bytes, created_at, seq)
             VALUES (?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM files))",
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
        let row = sqlx::query("SELECT * FROM files WHERE tenant = ? AND id = ?")
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
            "SELECT * FROM files WHERE tenant = ?1 AND (?2 IS NULL OR purpose = ?2)
             AND (?3 IS NULL OR seq < (SELECT seq FROM files WHERE id = ?3 AND tenant = ?1))
             ORDER BY seq DESC LIMIT ?4",
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
        let done = sqlx::query("DELETE FROM files WHERE tenant = ? AND id = ?")
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
             VALUES (?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM batches), ?, ?)",
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
        let row = sqlx::query("SELECT body FROM batches WHERE tenant = ? AND id = ?")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(batch_of).transpose()
    }

    /// A batch and its owner, for the worker that holds its lease.
    pub async fn batch_for_work(&self, id: &str) -> Result<Option<(Batch, Owner)>> {
        let row = sqlx::query("SELECT body, tenant, key_id FROM batches WHERE id = ?")
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
            "SELECT body FROM batches WHERE tenant = ?1
             AND (?2 IS NULL OR seq < (SELECT seq FROM batches WHERE id = ?2 AND tenant = ?1))
             ORDER BY seq DESC LIMIT ?3",
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
    pub async fn save_batch(&self, batch: &Batch) -> Result<()> {
        let body = serde_json::to_string(batch).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query("UPDATE batches SET body = ?, status = ? WHERE id = ?")
            .bind(body)
            .bind(batch.status.as_str())
            .bind(&batch.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ask a batch to stop: `cancelling` unless it already ended. The batch as it is now.
    pub async fn cancel(&self, tenant: &str, id: &str, now: u64) -> Result<Option<Batch>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT body FROM batches WHERE tenant = ? AND id = ?")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut batch = batch_of(&row)?;
        if !batch.status.is_terminal() && batch.status != Status::Cancelling {
            batch.status = Status::Cancelling;
            batch.cancelling_at = Some(now);
            let body =
                serde_json::to_string(&batch).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query("UPDATE batches SET body = ?, status = ? WHERE id = ?")
                .bind(body)
                .bind(batch.status.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(batch))
    }

    /// Claim the oldest batch with work left whose lease is free, for `lease_ms`.
    pub async fn claim(&self, owner: &str, now_ms: u64, lease_ms: u64) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT id FROM batches WHERE status IN ('validating', 'in_progress', 'cancelling', 'finalizing')
             AND lease_until < ? ORDER BY seq LIMIT 1",
        )
        .bind(i64_of(now_ms))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: String = row.try_get("id")?;
        // Only one claimant wins: the update checks the lease is still free.
        let won = sqlx::query(
            "UPDATE batches SET lease_owner = ?, lease_until = ? WHERE id = ? AND lease_until < ?",
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
            sqlx::query("UPDATE batches SET lease_until = ? WHERE id = ? AND lease_owner = ?")
                .bind(i64_of(until_ms))
                .bind(id)
                .bind(owner)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn release(&self, id: &str, owner: &str) -> Result<()> {
        sqlx::query("UPDATE batches SET lease_until = 0 WHERE id = ? AND lease_owner = ?")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Store a validated batch's lines and move it to `in_progress`, in one transaction
    /// (a crash leaves it validating, with no lines, to be validated again).
    pub async fn start(&self, batch: &Batch, lines: &[(String, String)]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM lines WHERE batch_id = ?")
            .bind(&batch.id)
            .execute(&mut *tx)
            .await?;
        for (i, (custom_id, body)) in lines.iter().enumerate() {
            sqlx::query(
                "INSERT INTO lines (batch_id, idx, custom_id, body, state) VALUES (?, ?, ?, ?, 'pending')",
            )
            .bind(&batch.id)
            .bind(i64::try_from(i).unwrap_or(i64::MAX))
            .bind(custom_id)
            .bind(body)
            .execute(&mut *tx)
            .await?;
        }
        let body = serde_json::to_string(batch).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query("UPDATE batches SET body = ?, status = ? WHERE id = ?")
            .bind(body)
            .bind(batch.status.as_str())
            .bind(&batch.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Lines not finished yet (pending, or sent before a crash), in input order.
    pub async fn unfinished(&self, batch_id: &str, limit: i64) -> Result<Vec<Line>> {
        let rows = sqlx::query(
            "SELECT idx, custom_id, body FROM lines WHERE batch_id = ? AND state IN ('pending', 'sent')
             ORDER BY idx LIMIT ?",
        )
        .bind(batch_id)
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
            "UPDATE lines SET state = 'sent' WHERE batch_id = ? AND idx = ? AND state = 'pending'",
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
            "UPDATE lines SET state = ?, record = ? WHERE batch_id = ? AND idx = ? AND state IN ('pending', 'sent')",
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
                    COALESCE(SUM(state = 'done'), 0) AS done,
                    COALESCE(SUM(state = 'failed'), 0) AS failed
             FROM lines WHERE batch_id = ?",
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
            "SELECT state, record FROM lines WHERE batch_id = ? AND state IN ('done', 'failed') ORDER BY idx",
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
        for line in self.unfinished(batch_id, i64::MAX).await? {
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
    /// Queue an event for delivery (once: the same event id again is ignored, so a batch
    /// finalized twice after a crash notifies once).
    pub async fn enqueue_delivery(
        &self,
        event_id: &str,
        batch_id: &str,
        owner: &Owner,
        body: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT OR IGNORE INTO deliveries (event_id, batch_id, tenant, key_id, body) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(event_id)
        .bind(batch_id)
        .bind(&owner.tenant)
        .bind(&owner.key_id)
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

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
             WHERE done = 0 AND next_at <= ? AND attempts < ? ORDER BY next_at LIMIT ?",
        )
        .bind(i64_of(now))
        .bind(max_attempts)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let event_id: String = r.try_get("event_id")?;
            let won = sqlx::query("UPDATE deliveries SET next_at = ? WHERE event_id = ? AND next_at <= ? AND done = 0")
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
        sqlx::query("UPDATE deliveries SET attempts = attempts + 1, done = ?, next_at = ? WHERE event_id = ?")
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
        let left = s.unfinished("batch_2", 10).await.unwrap();
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
