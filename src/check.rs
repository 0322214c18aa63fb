//! `spooky check FILE...`: every error of every file, then a one-line summary.

use std::path::PathBuf;
use std::process::ExitCode;

use spooky_stages::config;

use crate::EXIT_BAD_CONFIG;

pub fn check(files: &[PathBuf]) -> ExitCode {
    let mut bad = 0;
    for f in files {
        match config::load(f) {
            Ok(c) => println!(
                "{}: ok: pipeline \"{}\", {} stages, {} listeners, {} routes, {} upstreams",
                f.display(),
                c.pipeline.name,
                c.chain.len(),
                c.listeners.len(),
                c.routes.len(),
                c.upstreams.len()
            ),
            Err(errors) => {
                bad += 1;
                eprintln!("{errors}");
                eprintln!("{}: {} error(s)", f.display(), errors.0.len());
            }
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BAD_CONFIG)
    }
}
