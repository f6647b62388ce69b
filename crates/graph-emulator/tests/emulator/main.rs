//! Integration tests: the emulator over real HTTP on 127.0.0.1:0 with a
//! plain client. One test per enforced rule of graph-api.md, named after
//! the rule, asserting the exact status and error code; plus the scripted
//! session of the emulator issue's acceptance (`session.rs`).
//!
//! One test binary (faster to link) with one module per area.

mod common;

mod admin;
mod auth;
#[cfg(feature = "cert-auth")]
mod certificates;
mod delta;
mod errors;
mod items;
mod names;
#[cfg(feature = "tls")]
mod rclone;
mod session;
mod simple_upload;
#[cfg(feature = "tls")]
mod tls;
mod upload_session;
