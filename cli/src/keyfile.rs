//! The key file: an ECDS resource (the key-auth Wasm filter config) that Envoy watches.
//!
//! Envoy needs the filter config as a `TypedExtensionConfig` whose plugin `configuration`
//! is a `google.protobuf.StringValue` holding key-auth's JSON (a `Struct` would reach the
//! plugin as protobuf bytes, not JSON). This module edits that inner JSON and leaves the
//! rest of the resource (Wasm code path, VM settings) as it is. The same resource for the
//! native build (an Envoy dynamic-module filter) holds the JSON in its `filter_config`.

use crate::render::write_atomic;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use sluice_key_auth::{KeyAuthConfig, KeyStore};
use std::path::{Path, PathBuf};

/// Where the plugin configuration string sits in the ECDS document: a wasm filter's, a
/// dynamic-module filter's.
const CONFIG_POINTERS: [&str; 2] = [
    "/resources/0/typed_config/config/configuration/value",
    "/resources/0/typed_config/filter_config/value",
];

pub struct KeyFile {
    path: PathBuf,
    document: Value,
    /// Which of [`CONFIG_POINTERS`] the document has.
    pointer: &'static str,
    pub config: KeyAuthConfig,
}

/// An exclusive lock on a key file, held while it is read, changed and replaced, so that
/// concurrent `sluice keys` commands serialize: no edit is lost and a revoke is never undone.
/// The lock is on a sibling file (`.<name>.lock`), because the key file itself is replaced
/// by a rename on every save. Released when dropped (or when the process dies).
pub struct KeyFileLock {
    _file: std::fs::File,
}

impl KeyFileLock {
    pub fn acquire(path: &Path) -> Result<Self> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lock_path = dir.join(format!(".{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        Ok(Self { _file: file })
    }
}

impl KeyFile {
    /// Read, change and replace the key file under its lock. `change` sees the keys as
    /// they are now, after every edit that finished before this one.
    pub fn edit<T>(path: &Path, change: impl FnOnce(&mut KeyAuthConfig) -> Result<T>) -> Result<T> {
        let _lock = KeyFileLock::acquire(path)?;
        let mut kf = Self::load(path)?;
        let out = change(&mut kf.config)?;
        kf.save()?;
        Ok(out)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the key file {} (start the stack with scripts/run.sh, or pass --key-file)",
                path.display()
            )
        })?;
        let document: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let (pointer, inner) = CONFIG_POINTERS
            .iter()
            .find_map(|p| Some((*p, document.pointer(p)?.as_str()?)))
            .with_context(|| {
                format!(
                    "{} has no key-auth configuration at {}",
                    path.display(),
                    CONFIG_POINTERS.join(" or ")
                )
            })?;
        let config: KeyAuthConfig = sluice_common::parse_config(inner.as_bytes())
            .with_context(|| format!("the key-auth configuration in {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            document,
            pointer,
            config,
        })
    }

    /// Validate exactly as the filter will, then replace the file atomically: Envoy only
    /// reloads on a rename into the watched directory, and never sees half a file.
    pub fn save(&mut self) -> Result<()> {
        if let Err(e) = KeyStore::from_config(&self.config) {
            bail!("refusing to write an invalid key configuration: {e}");
        }
        let inner = serde_json::to_string(&self.config)?;
        match self.document.pointer_mut(self.pointer) {
            Some(slot) => *slot = Value::String(inner),
            None => bail!("the key file lost its configuration slot"),
        }
        let text = serde_json::to_string_pretty(&self.document)?;
        write_atomic(&self.path, text.as_bytes())
    }
}
