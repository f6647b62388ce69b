//! The integration-test binary: every test here runs the real `sharepush`
//! binary (or the library) against real files in a temporary directory.
//! One binary, many modules, so the suite links once.

mod cli;
mod support;
