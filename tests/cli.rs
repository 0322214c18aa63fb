//! The command line: `spooky check` output and exit codes, `run` on a bad file, `--version`.

mod support;

use support::{TempDir, spooky};

const QUICKSTART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/quickstart.toml");
const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/reference.toml");

#[test]
fn check_valid_files_exits_0_with_one_line_each() {
    let (code, out, _) = spooky(&["check", QUICKSTART, REFERENCE]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().all(|l| l.contains(": ok: pipeline")), "{out}");
}

#[test]
fn check_reports_every_error_with_file_line_and_key_and_exits_64() {
    let dir = TempDir::new();
    let bad = dir.0.join("bad.toml");
    let text = std::fs::read_to_string(QUICKSTART)
        .expect("quickstart")
        .replace("capacity = 1024", "capacity = 0")
        .replace("upstream = \"app\"", "upstream = \"ap\"")
        .replace("deadline = \"1s\"", "deadline = \"1 sec\"");
    std::fs::write(&bad, &text).expect("write");
    let line = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .expect("needle")
            + 1
    };
    let f = bad.display().to_string();
    let (code, out, err) = spooky(&["check", QUICKSTART, &f]);
    assert_eq!(code, 64);
    assert!(
        out.contains(": ok: pipeline"),
        "the valid file is still reported: {out}"
    );
    for (needle, key) in [
        ("capacity = 0", "stages.queue.capacity"),
        ("1 sec", "stages.queue.deadline"),
        ("upstream = \"ap\"", "routes[1].upstream"),
    ] {
        let prefix = format!("{f}:{}:", line(needle));
        assert!(
            err.lines()
                .any(|l| l.starts_with(&prefix) && l.contains(&format!(": {key}: "))),
            "no `{prefix}… {key}` in:\n{err}"
        );
    }
    assert!(err.contains("did you mean \"app\""), "{err}");
    assert!(err.contains("3 error(s)"), "{err}");
}

#[test]
fn check_unreadable_file_and_run_bad_file_exit_64() {
    let (code, _, err) = spooky(&["check", "/nonexistent/spooky.toml"]);
    assert_eq!(code, 64);
    assert!(
        err.contains("/nonexistent/spooky.toml: cannot read"),
        "{err}"
    );
    let dir = TempDir::new();
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "[pipeline]\nname = \"x\"\n").expect("write");
    let (code, _, err) = spooky(&["run", &bad.display().to_string()]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("the chain") || err.contains("missing field `chain`"),
        "{err}"
    );
}

#[test]
fn version() {
    let (code, out, _) = spooky(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("spooky {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_diff_prints_what_a_reload_would_change() {
    let dir = TempDir::new();
    let new = dir.0.join("new.toml");
    let text = std::fs::read_to_string(QUICKSTART).expect("quickstart");
    std::fs::write(
        &new,
        text.replace("capacity = 1024", "capacity = 512")
            + "\n[[routes]]\nname = \"extra\"\nmatch = { path_prefix = \"/extra\" }\nrespond = { status = 204 }\n",
    )
    .expect("write");
    let new = new.display().to_string();
    let (code, out, err) = spooky(&["check", "--diff", QUICKSTART, &new]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "+ route extra"), "{out}");
    assert!(out.lines().any(|l| l == "~ stage queue"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let (code, out, _) = spooky(&["check", "--diff", QUICKSTART, QUICKSTART]);
    assert_eq!((code, out.trim()), (0, "no changes"));
    let (code, _, err) = spooky(&["check", "--diff", QUICKSTART, "/nonexistent.toml"]);
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent.toml: cannot read"), "{err}");
}
