use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sluice_cli::keyfile::KeyFile;
use sluice_cli::keys::{generate, KeySpec};
use sluice_cli::render::{parse_vars, render_file};
use sluice_cli::usage::{aggregate, read_log, render, Format, GroupBy, PriceTable, Window};
use sluice_common::Limits;
use std::path::PathBuf;
use time::OffsetDateTime;

/// The Sluice command line: API keys, usage reports and config rendering.
#[derive(Parser)]
#[command(name = "sluice", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage API keys in the key file that Envoy watches.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Usage totals from the gateway's JSON access log (tokens, requests, cost).
    Usage {
        /// The access log (JSON lines); the local stack's by default.
        #[arg(long, default_value = ".sluice/access.log")]
        log: PathBuf,
        /// Group by these, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "key,model")]
        by: Vec<GroupBy>,
        #[arg(long, value_enum, default_value = "day")]
        window: Window,
        /// A price table (JSON: per-model prices per million tokens) to add cost.
        #[arg(long)]
        prices: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Render a config template (envoy/*.j2) with NAME=VALUE variables.
    Render {
        template: PathBuf,
        #[arg(long, short)]
        out: PathBuf,
        /// NAME=VALUE; JSON values (numbers, true/false, lists) keep their type.
        #[arg(long = "set", short = 's')]
        vars: Vec<String>,
    },
}

#[derive(Args)]
struct KeyFileArg {
    /// The ECDS key file; the local stack's by default.
    #[arg(
        long,
        env = "SLUICE_KEY_FILE",
        default_value = ".sluice/ecds/key-auth.json"
    )]
    key_file: PathBuf,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key. The key is printed once, on stdout; only its digest is stored.
    Create {
        #[command(flatten)]
        file: KeyFileArg,
        #[arg(long)]
        tenant: String,
        /// Public id (default: random `key_...`).
        #[arg(long)]
        id: Option<String>,
        /// Model globs the key may use, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Requests in flight at once.
        #[arg(long)]
        max_parallel: Option<u64>,
        /// Tokens per day.
        #[arg(long)]
        daily_tokens: Option<u64>,
        /// RFC 3339 time or a duration from now (30d, 12h, 90m).
        #[arg(long)]
        expires: Option<String>,
        /// `interactive` (default) or `batch`: batch requests wait behind interactive ones
        /// when a pool is saturated.
        #[arg(long, default_value = "interactive", value_parser = parse_priority)]
        priority: sluice_common::Priority,
    },
    /// List keys (ids and prefixes, never secrets).
    List {
        #[command(flatten)]
        file: KeyFileArg,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print the key-auth configuration the key file holds, as JSON: keys by digest, and the
    /// batch secret if one is set. For rendering it into another form of the deployment:
    /// `sluice render envoy/ecds/key-auth.json.j2 ... -s key_auth_config="$(sluice keys config)"`.
    Config {
        #[command(flatten)]
        file: KeyFileArg,
    },
    /// Remove a key: requests with it get 401 once Envoy reloads (about 2 s).
    Revoke {
        #[command(flatten)]
        file: KeyFileArg,
        id: String,
    },
    /// Keep a key but refuse it.
    Disable {
        #[command(flatten)]
        file: KeyFileArg,
        id: String,
    },
    /// Accept a disabled key again.
    Enable {
        #[command(flatten)]
        file: KeyFileArg,
        id: String,
    },
    /// Set the secret sluice-batch signs its owner assertions with (read from a file, at
    /// least 32 bytes; the same file is sluice-batch's --secret-file).
    BatchSecret {
        #[command(flatten)]
        file: KeyFileArg,
        #[arg(long)]
        secret_file: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Render {
            template,
            out,
            vars,
        } => render_file(&template, &out, &parse_vars(&vars)?),
        Command::Keys(cmd) => keys(cmd),
        Command::Usage {
            log,
            by,
            window,
            prices,
            format,
        } => {
            let records = read_log(&log)?;
            let prices = prices.as_deref().map(PriceTable::load).transpose()?;
            let rows = aggregate(&records, &by, window, prices.as_ref());
            print!("{}", render(&rows, &by, prices.as_ref(), format)?);
            Ok(())
        }
    }
}

fn keys(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Create {
            file,
            tenant,
            id,
            models,
            rpm,
            tpm,
            max_parallel,
            daily_tokens,
            expires,
            priority,
        } => {
            let spec = KeySpec {
                id,
                tenant,
                models,
                limits: Limits {
                    requests_per_minute: rpm,
                    tokens_per_minute: tpm,
                    max_parallel,
                    daily_tokens,
                },
                priority,
                expires,
            };
            let new = generate(&spec, OffsetDateTime::now_utc())?;
            let (id, tenant) = (new.record.id.clone(), new.record.tenant.clone());
            // Under the key file's lock: the key is in the file before it is printed.
            KeyFile::edit(&file.key_file, |config| {
                if config.keys.iter().any(|k| k.id == new.record.id) {
                    bail!("a key with id {:?} exists already", new.record.id);
                }
                config.keys.push(new.record);
                Ok(())
            })?;
            eprintln!("created key {id} for tenant {tenant} (shown once; store it now)");
            println!("{}", new.secret);
            Ok(())
        }
        KeysCommand::List { file, json } => {
            let kf = KeyFile::load(&file.key_file)?;
            if json {
                for k in &kf.config.keys {
                    let mut v = serde_json::to_value(k)?;
                    if let Some(o) = v.as_object_mut() {
                        o.remove("sha256");
                    }
                    println!("{v}");
                }
                return Ok(());
            }
            println!(
                "{:<20} {:<16} {:<16} {:<8} {:<22} {:<16} LIMITS",
                "ID", "TENANT", "PREFIX", "ENABLED", "EXPIRES", "MODELS"
            );
            for k in &kf.config.keys {
                println!(
                    "{:<20} {:<16} {:<16} {:<8} {:<22} {:<16} {}",
                    k.id,
                    k.tenant,
                    k.prefix.as_deref().unwrap_or("-"),
                    k.enabled,
                    k.expires_at.as_deref().unwrap_or("never"),
                    k.models.join(","),
                    serde_json::to_string(&k.limits)?
                );
            }
            Ok(())
        }
        KeysCommand::Config { file } => {
            let kf = KeyFile::load(&file.key_file)?;
            println!("{}", serde_json::to_string(&kf.config)?);
            Ok(())
        }
        KeysCommand::Revoke { file, id } => edit(&file, &id, |keys, i| {
            keys.remove(i);
            "revoked"
        }),
        KeysCommand::Disable { file, id } => edit(&file, &id, |keys, i| {
            if let Some(k) = keys.get_mut(i) {
                k.enabled = false;
            }
            "disabled"
        }),
        KeysCommand::Enable { file, id } => edit(&file, &id, |keys, i| {
            if let Some(k) = keys.get_mut(i) {
                k.enabled = true;
            }
            "enabled"
        }),
        KeysCommand::BatchSecret { file, secret_file } => {
            let secret = std::fs::read_to_string(&secret_file)
                .with_context(|| format!("cannot read {}", secret_file.display()))?
                .trim()
                .to_string();
            if secret.len() < sluice_common::batch::MIN_SECRET_BYTES {
                bail!(
                    "the batch secret must be at least {} bytes",
                    sluice_common::batch::MIN_SECRET_BYTES
                );
            }
            KeyFile::edit(&file.key_file, |config| {
                config.batch_secret = Some(secret);
                Ok(())
            })?;
            eprintln!("batch secret set");
            Ok(())
        }
    }
}

fn edit(
    file: &KeyFileArg,
    id: &str,
    change: impl FnOnce(&mut Vec<sluice_key_auth::KeyRecord>, usize) -> &'static str,
) -> Result<()> {
    let what = KeyFile::edit(&file.key_file, |config| {
        let Some(i) = config.keys.iter().position(|k| k.id == id) else {
            bail!("no key with id {id:?}");
        };
        Ok(change(&mut config.keys, i))
    })?;
    eprintln!("{what} key {id}");
    Ok(())
}

fn parse_priority(s: &str) -> std::result::Result<sluice_common::Priority, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("{s:?} is not interactive or batch"))
}
