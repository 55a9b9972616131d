//! The command line: `serve`, and operator commands that work on the database directly
//! through the library (`connections`, `providers`, `keys`), built from the same
//! configuration as the server so both see the same data the same way; `keys generate` and
//! `webhooks secret` only print a new secret, and `openapi` the API's document.
//!
//! Tokens are never required on the command line (shell history keeps them): `connections
//! import` reads a JSON document from a file or stdin, with flags only as a convenience.

use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tokenwarden::store::ListQuery;
use tokenwarden::{
    AccessToken, ConnectionKey, ConnectionStatus, ProviderName, RefreshOptions, RefreshToken,
    UserId, Warden,
};

use crate::app::{App, StartError, build_warden};
use crate::bootstrap::{self, DEFAULT_DATA_DIR};
use crate::config::ConfigError;
use crate::views::{ConnectionView, ProviderView};

/// tokenwarden: a self-hosted OAuth token broker.
#[derive(Debug, Parser)]
#[command(name = "tokenwarden", version, about)]
pub struct Cli {
    /// Configuration file. Without one, `serve` runs on the embedded local default.
    #[arg(long, global = true, env = "TOKENWARDEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory of the embedded default (used only without a configuration file).
    #[arg(long, global = true, env = "TOKENWARDEN_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the HTTP API.
    Serve(ServeArgs),
    /// Inspects and changes connections in the database.
    #[command(subcommand)]
    Connections(ConnectionsCommand),
    /// Shows configured providers.
    #[command(subcommand)]
    Providers(ProvidersCommand),
    /// Encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Webhook endpoints.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Prints the HTTP API's OpenAPI document for any configuration (the one clients are
    /// generated from; a server's `GET /openapi.json` narrows it to its configured names).
    Openapi,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides `listen` and TOKENWARDEN_LISTEN); port 0 picks one.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// `(user_id, provider, account_id)`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    pub user_id: String,
    pub provider: String,
    pub account_id: String,
}

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Lists connections (all pages), one per line.
    List {
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        user_id: Option<String>,
        /// active or needs_reconnect.
        #[arg(long)]
        status: Option<String>,
        /// Stop after this many connections.
        #[arg(long)]
        limit: Option<u64>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows one connection (no secrets).
    Show(KeyArgs),
    /// Creates or replaces a connection. The body is the API's import JSON, from --file
    /// (`-` for stdin); flags fill in or override its fields.
    Import {
        #[command(flatten)]
        key: KeyArgs,
        /// JSON file with access_token, refresh_token, expires_in | expires_at, scopes,
        /// metadata; `-` reads stdin.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Prefer --file: command lines end up in shell history.
        #[arg(long, value_parser = |s: &str| Ok::<_, std::convert::Infallible>(AccessToken::new(s)))]
        access_token: Option<AccessToken>,
        /// Prefer --file: command lines end up in shell history.
        #[arg(long, value_parser = |s: &str| Ok::<_, std::convert::Infallible>(RefreshToken::new(s)))]
        refresh_token: Option<RefreshToken>,
        #[arg(long)]
        expires_in: Option<u64>,
        /// RFC 3339.
        #[arg(long)]
        expires_at: Option<String>,
        /// Comma-separated.
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
    },
    /// Forces a refresh now.
    Refresh {
        #[command(flatten)]
        key: KeyArgs,
        #[arg(long)]
        max_retries: Option<u32>,
        #[arg(long)]
        initial_delay_ms: Option<u64>,
        #[arg(long)]
        max_delay_ms: Option<u64>,
    },
    /// Deletes a connection (revoking upstream where supported).
    Delete(KeyArgs),
}

#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// Lists configured providers.
    List,
    /// Lists the built-in provider catalog (`[providers.NAME] catalog = "<id>"`).
    Catalog {
        /// Every entry in full, with the documentation link of each fact, as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Prints a new random encryption key (base64 of 32 bytes) for `[encryption] keys`.
    Generate,
    /// Shows how many ciphertexts each key id protects.
    Status,
    /// Re-encrypts every secret under `encryption.active_key` (online, resumable).
    Rotate {
        /// Connections per batch (one transaction each).
        #[arg(long, default_value_t = 200)]
        batch_size: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Prints a new signing secret (`whsec_` + base64 of 32 random bytes) for
    /// `[webhooks.endpoints.NAME] secret`; give the same value to the endpoint's verifier.
    Secret,
}

/// A failed command. Messages never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{0}")]
    Failed(String),
}

impl From<tokenwarden::Error> for CliError {
    fn from(e: tokenwarden::Error) -> Self {
        let reconnect = if e.reconnect() {
            " (the user must reconnect)"
        } else {
            ""
        };
        Self::Failed(format!("{}: {}{reconnect}", e.code(), e.message()))
    }
}

fn failed(message: impl Into<String>) -> CliError {
    CliError::Failed(message.into())
}

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> Result<(), CliError> {
    let env = || std::env::vars().collect::<Vec<_>>();
    match cli.command {
        Command::Serve(args) => serve(cli.config, cli.data_dir, env(), args).await,
        Command::Keys(KeysCommand::Generate) => {
            println!("{}", tokenwarden::KeyRing::generate_key_base64());
            Ok(())
        }
        Command::Webhooks(WebhooksCommand::Secret) => {
            let secret = tokenwarden::webhooks::WebhookSecret::generate();
            println!("{}", secret.expose_secret());
            Ok(())
        }
        // The catalog is compiled in: no configuration or database needed.
        Command::Providers(ProvidersCommand::Catalog { json }) => catalog(json),
        // Neither does the document for any configuration.
        Command::Openapi => print_json(&crate::api::openapi_any_configuration()),
        command => {
            let resolved = bootstrap::resolve(cli.config.as_deref(), &cli.data_dir, env(), false)?;
            let warden = build_warden(&resolved.config).await?;
            match command {
                Command::Connections(c) => connections(&warden, c).await,
                Command::Providers(ProvidersCommand::List) => providers(&warden),
                Command::Keys(KeysCommand::Status) => keys_status(&warden, &resolved.config).await,
                Command::Keys(KeysCommand::Rotate { batch_size }) => {
                    keys_rotate(&warden, batch_size).await
                }
                Command::Serve(_)
                | Command::Keys(KeysCommand::Generate)
                | Command::Webhooks(WebhooksCommand::Secret)
                | Command::Openapi
                | Command::Providers(ProvidersCommand::Catalog { .. }) => Ok(()),
            }
        }
    }
}

async fn serve(
    config: Option<PathBuf>,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
    args: ServeArgs,
) -> Result<(), CliError> {
    let mut resolved = bootstrap::resolve(config.as_deref(), &data_dir, env, true)?;
    if let Some(listen) = args.listen {
        resolved.config.listen = listen;
    }
    let mut stdout = std::io::stdout();
    if let Some(key) = &resolved.generated_admin_key {
        let _ = writeln!(stdout, "{}", bootstrap::first_run_banner(key, &resolved));
    } else if let Some(notice) = bootstrap::reuse_notice(&resolved) {
        let _ = writeln!(stdout, "{notice}");
    }
    let _ = stdout.flush();
    let shutdown = shutdown_signal();
    let listen = resolved.config.listen;
    let app = App::build(resolved.config, crate::telemetry::metrics_handle()).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| failed(format!("listen: cannot bind {listen}: {e}")))?;
    crate::app::run(listener, app, shutdown)
        .await
        .map_err(|e| failed(format!("server failed: {e}")))
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal that arrives right after start-up is not lost
/// (the default action would kill the process without draining).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(terminate) => {}
                () = wait(interrupt) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn parse_key(warden: &Warden, key: &KeyArgs) -> Result<ConnectionKey, CliError> {
    let key = ConnectionKey::parse(&key.user_id, &key.provider, &key.account_id)
        .map_err(|e| failed(e.to_string()))?;
    if warden.provider(&key.provider).is_none() {
        return Err(failed(format!(
            "UNKNOWN_PROVIDER: provider {} is not configured",
            key.provider
        )));
    }
    Ok(key)
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| failed(e.to_string()))?;
    println!("{text}");
    Ok(())
}

async fn connections(warden: &Warden, command: ConnectionsCommand) -> Result<(), CliError> {
    match command {
        ConnectionsCommand::List {
            provider,
            user_id,
            status,
            limit,
            json,
        } => list(warden, provider, user_id, status, limit, json).await,
        ConnectionsCommand::Show(key) => {
            let key = parse_key(warden, &key)?;
            print_json(&ConnectionView::from(&warden.connection(&key).await?))
        }
        ConnectionsCommand::Import {
            key,
            file,
            access_token,
            refresh_token,
            expires_in,
            expires_at,
            scopes,
        } => {
            let key = parse_key(warden, &key)?;
            let mut body = match file {
                Some(path) => read_json_document(&path)?,
                None => serde_json::Value::Object(serde_json::Map::new()),
            };
            let object = body
                .as_object_mut()
                .ok_or_else(|| failed("the import document must be a JSON object"))?;
            if let Some(v) = access_token {
                object.insert("access_token".to_owned(), v.expose_secret().into());
            }
            if let Some(v) = refresh_token {
                object.insert("refresh_token".to_owned(), v.expose_secret().into());
            }
            if let Some(v) = expires_in {
                object.insert("expires_in".to_owned(), v.into());
                object.remove("expires_at");
            }
            if let Some(v) = expires_at {
                object.insert("expires_at".to_owned(), v.into());
                object.remove("expires_in");
            }
            if let Some(v) = scopes {
                object.insert("scopes".to_owned(), v.into());
            }
            let body = serde_json::to_vec(&body).map_err(|e| failed(e.to_string()))?;
            let request = crate::api::parse_import(&body, time::OffsetDateTime::now_utc())
                .map_err(|e| failed(format!("{}: {}", e.code(), e.message())))?;
            let (meta, outcome) = warden.import(key, request).await?;
            eprintln!(
                "{}",
                if outcome == tokenwarden::store::PutOutcome::Created {
                    "created"
                } else {
                    "replaced"
                }
            );
            print_json(&ConnectionView::from(&meta))
        }
        ConnectionsCommand::Refresh {
            key,
            max_retries,
            initial_delay_ms,
            max_delay_ms,
        } => {
            let key = parse_key(warden, &key)?;
            let options = RefreshOptions {
                max_retries,
                initial_delay: initial_delay_ms.map(std::time::Duration::from_millis),
                max_delay: max_delay_ms.map(std::time::Duration::from_millis),
            };
            print_json(&ConnectionView::from(
                &warden.refresh_token(&key, options).await?,
            ))
        }
        ConnectionsCommand::Delete(key) => {
            let key = parse_key(warden, &key)?;
            if warden.delete(&key).await? {
                eprintln!("deleted {key}");
                Ok(())
            } else {
                Err(failed(format!("ACCOUNT_NOT_FOUND: no connection {key}")))
            }
        }
    }
}

fn read_json_document(path: &std::path::Path) -> Result<serde_json::Value, CliError> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| failed(format!("stdin: {e}")))?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| failed(format!("{}: {e}", path.display())))?;
    }
    // serde_json's message has no input excerpt, only line and column.
    serde_json::from_str(&text).map_err(|e| failed(format!("{}: {e}", path.display())))
}

async fn list(
    warden: &Warden,
    provider: Option<String>,
    user_id: Option<String>,
    status: Option<String>,
    limit: Option<u64>,
    json: bool,
) -> Result<(), CliError> {
    let mut query = ListQuery {
        limit: 500,
        ..ListQuery::default()
    };
    if let Some(p) = provider {
        query.provider = Some(ProviderName::parse(p).map_err(|e| failed(e.to_string()))?);
    }
    if let Some(u) = user_id {
        query.user_id = Some(UserId::parse(u).map_err(|e| failed(e.to_string()))?);
    }
    if let Some(s) = status {
        query.status = Some(
            ConnectionStatus::parse(&s)
                .ok_or_else(|| failed("--status must be active or needs_reconnect"))?,
        );
    }
    // A known total gives a real progress bar; with filters it is a spinner.
    let total = if query.provider.is_none() && query.user_id.is_none() {
        warden.store().count_by_status().await.ok().map(|counts| {
            counts
                .iter()
                .filter(|(s, _)| query.status.is_none_or(|q| q == *s))
                .map(|(_, n)| n)
                .sum::<u64>()
        })
    } else {
        None
    };
    let total = match (total, limit) {
        (Some(t), Some(l)) => Some(t.min(l)),
        (t, _) => t,
    };
    let bar = match total {
        Some(total) => indicatif::ProgressBar::new(total),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut out = std::io::stdout().lock();
    let mut shown = 0u64;
    if !json {
        let _ = writeln!(
            out,
            "USER_ID\tPROVIDER\tACCOUNT_ID\tSTATUS\tEXPIRES_AT\tLAST_ERROR"
        );
    }
    'pages: loop {
        let page = warden.list(&query).await?;
        for meta in &page.items {
            if limit.is_some_and(|l| shown >= l) {
                break 'pages;
            }
            let view = ConnectionView::from(meta);
            let line = if json {
                serde_json::to_string(&view).map_err(|e| failed(e.to_string()))?
            } else {
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    view.user_id,
                    view.provider,
                    view.account_id,
                    view.status,
                    view.expires_at.as_deref().unwrap_or("-"),
                    view.last_error.as_ref().map_or("-", |e| e.code.as_str()),
                )
            };
            bar.suspend(|| writeln!(out, "{line}"))
                .map_err(|e| failed(e.to_string()))?;
            shown += 1;
            bar.inc(1);
        }
        match page.next_cursor {
            Some(cursor) if !page.items.is_empty() => query.cursor = Some(cursor),
            _ => break,
        }
    }
    bar.finish_and_clear();
    eprintln!("{shown} connection(s)");
    Ok(())
}

fn providers(warden: &Warden) -> Result<(), CliError> {
    let views: Vec<ProviderView> = warden
        .providers()
        .into_iter()
        .map(|info| {
            let state = ProviderName::parse(info.name.as_str())
                .ok()
                .and_then(|n| warden.breaker_state(&n));
            ProviderView::new(info, state)
        })
        .collect();
    if views.is_empty() {
        eprintln!("no providers configured (add [providers.NAME] sections)");
    }
    print_json(&views)
}

/// `providers catalog`: one line per entry (id, name, token URL, documentation of the token
/// URL), or every entry in full as JSON.
fn catalog(json: bool) -> Result<(), CliError> {
    let entries = tokenwarden::provider::catalog::entries();
    if json {
        let all: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(id, entry)| {
                let value = serde_json::to_value(entry).unwrap_or(serde_json::Value::Null);
                ((*id).to_owned(), value)
            })
            .collect();
        return print_json(&all);
    }
    let width = entries.iter().map(|(id, _)| id.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (id, entry) in entries {
        let docs = entry.docs.get("token_url").map_or("", String::as_str);
        out.push_str(&format!(
            "{id:width$}  {}  {}  {docs}\n",
            entry.name, entry.token_url
        ));
    }
    print!("{out}");
    eprintln!(
        "{} providers; use one with [providers.NAME] catalog = \"<id>\" plus client_id and client_secret",
        entries.len()
    );
    Ok(())
}

async fn keys_status(warden: &Warden, config: &crate::config::Config) -> Result<(), CliError> {
    let usage = warden
        .store()
        .key_usage()
        .await
        .map_err(|e| failed(format!("reading key usage: {e}")))?;
    let active = config.encryption.active_key.as_deref().unwrap_or("");
    println!("KEY_ID\tCIPHERTEXTS\tSTATE");
    let mut ids: Vec<&str> = config.encryption.keys.keys().map(String::as_str).collect();
    for u in &usage {
        if !ids.contains(&u.key_id.as_str()) {
            ids.push(u.key_id.as_str());
        }
    }
    for id in ids {
        let count = usage
            .iter()
            .find(|u| u.key_id == id)
            .map_or(0, |u| u.ciphertexts);
        let state = if id == active {
            "active"
        } else if config.encryption.keys.contains_key(id) {
            if count == 0 {
                "configured, unused (safe to remove)"
            } else {
                "configured"
            }
        } else {
            "MISSING from encryption.keys: these secrets cannot be decrypted"
        };
        println!("{id}\t{count}\t{state}");
    }
    Ok(())
}

async fn keys_rotate(warden: &Warden, batch_size: u32) -> Result<(), CliError> {
    let batch_size = batch_size.clamp(1, 10_000);
    let counts = warden
        .store()
        .count_by_status()
        .await
        .map_err(|e| failed(format!("counting connections: {e}")))?;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let bar = indicatif::ProgressBar::new(total);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let summary = tokenwarden::store::reseal_all(warden.store().as_ref(), batch_size, |batch| {
        bar.inc(batch.scanned);
    })
    .await
    .map_err(|e| failed(format!("rotation stopped (run it again to resume): {e}")))?;
    bar.finish_and_clear();
    println!(
        "re-encrypted {} connection(s) in {} batch(es); {} could not be opened",
        summary.resealed, summary.batches, summary.failed
    );
    if summary.failed > 0 {
        return Err(failed(
            "some secrets use a key that is not configured: see `tokenwarden keys status`",
        ));
    }
    Ok(())
}
