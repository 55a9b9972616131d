//! The tokenwarden server: the HTTP API, configuration, metrics and command line over the
//! `tokenwarden` library.
//!
//! This crate is glue: it owns no refresh logic and no storage. `main.rs` only parses the
//! command line and calls [`cli::execute`]; integration tests build an [`App`] and serve it
//! with [`run`] on `127.0.0.1:0`. The dashboard's files (`ui/`) are embedded by [`ui`].

pub mod api;
pub mod app;
pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod connect;
pub mod error;
pub mod fast_path;
pub mod log_writer;
pub mod proxy;
pub mod telemetry;
pub mod ui;
pub mod views;
pub mod webhooks;

pub use app::{App, StartError, build_warden, run};
pub use config::Config;
