//! `spooky check FILE...`: every error and warning of every file, then a one-line summary.
//! Warnings (valid but probably unintended: equal-precedence routes, unused upstreams, …)
//! do not fail the check.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use spooky_stages::config;

use crate::EXIT_BAD_CONFIG;

pub fn check(files: &[PathBuf]) -> ExitCode {
    let mut bad = 0;
    for f in files {
        match config::load(f) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok: pipeline \"{}\", {} stages, {} listeners, {} routes, {} upstreams{}",
                    f.display(),
                    c.pipeline.name,
                    c.chain.len(),
                    c.listeners.len(),
                    c.routes.len(),
                    c.upstreams.len(),
                    match c.warnings.len() {
                        0 => String::new(),
                        n => format!(", {n} warning(s)"),
                    }
                )
            }
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

/// `spooky check --diff OLD NEW`: both files checked, then one line per change from OLD to
/// NEW (`+` added, `-` removed, `~` changed), as a reload would report it.
pub fn diff(old: &Path, new: &Path) -> ExitCode {
    let load = |f: &Path| {
        config::load(f).map_err(|errors| {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", f.display(), errors.0.len());
        })
    };
    let (Ok(a), Ok(b)) = (load(old), load(new)) else {
        return ExitCode::from(EXIT_BAD_CONFIG);
    };
    let d = crate::diff::Diff::between(&a, &b);
    if d.is_empty() {
        println!("no changes");
    }
    for line in d.lines() {
        println!("{line}");
    }
    ExitCode::SUCCESS
}
