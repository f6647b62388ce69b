//! The integration-test binary: every test here runs the real `sharepush`
//! binary (or the library) against real files in a temporary directory, and
//! the uploader's tests against the Graph emulator over real HTTP.
//! One binary, many modules, so the suite links once.

mod auth;
mod cli;
mod daemon;
#[cfg(feature = "demo")]
mod demo;
mod emu;
mod library;
mod logging;
mod reconcile;
mod status;
mod support;
mod sync;
mod systemd;
