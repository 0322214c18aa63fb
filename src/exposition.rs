//! `GET /metrics`: the recorder's Prometheus text, put in a stable order (families by name,
//! series by labels, a histogram's buckets kept in their order), with the standard `process_*`
//! metrics read from `/proc/self` at scrape time. A stable order lets an operator diff two
//! scrapes and a test compare them.

use std::fmt::Write as _;

/// The recorder's text, sorted, with the process metrics added.
pub fn render(recorder_text: &str) -> String {
    let mut text = recorder_text.to_string();
    text.push_str(&process());
    sorted(&text)
}

/// One metric family: its `# HELP`/`# TYPE` lines and its samples.
#[derive(Default)]
struct Family {
    comments: Vec<String>,
    samples: Vec<String>,
}

/// The family a sample line belongs to: its name without a histogram's or summary's suffix.
fn family_of(name: &str, known: &std::collections::BTreeMap<String, Family>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && known.contains_key(base)
        {
            return base.to_string();
        }
    }
    name.to_string()
}

/// A sample's series, for ordering: its labels without `le` (so a histogram's buckets, sum
/// and count stay together, in the order they were written).
fn series_key(line: &str) -> String {
    let labels = match (line.find('{'), line.rfind('}')) {
        (Some(a), Some(b)) if a < b => &line[a + 1..b],
        _ => "",
    };
    labels
        .split("\",")
        .filter(|l| !l.starts_with("le="))
        .collect::<Vec<_>>()
        .join("\",")
        .trim_end_matches('"')
        .to_string()
}

/// Families by name, each family's series by labels (stable: a histogram's lines keep their
/// order).
fn sorted(text: &str) -> String {
    let mut families: std::collections::BTreeMap<String, Family> = Default::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            let name = rest.split(' ').next().unwrap_or("").to_string();
            families
                .entry(name)
                .or_default()
                .comments
                .push(line.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or("");
        let family = family_of(name, &families);
        families
            .entry(family)
            .or_default()
            .samples
            .push(line.to_string());
    }
    let mut out = String::with_capacity(text.len());
    for (_, mut f) in families {
        // HELP before TYPE.
        f.comments.sort();
        f.comments.dedup();
        f.samples.sort_by_cached_key(|l| series_key(l));
        for l in f.comments.iter().chain(&f.samples) {
            out.push_str(l);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// The standard process metrics (CPU, memory, file descriptors, threads, start time) from
/// `/proc/self`; empty where `/proc` is not there.
fn process() -> String {
    let mut out = String::new();
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return out;
    };
    // Fields after the command (which may hold spaces), from field 3 on.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return out;
    };
    let f: Vec<&str> = rest.split(' ').collect();
    let num = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Clock ticks per second: 100 on every Linux Spooky runs on (USER_HZ).
    let hz = 100.0;
    let page = 4096.0;
    let cpu = (num(14) + num(15)) / hz;
    let threads = num(20);
    let vsize = num(23);
    let rss = num(24) * page;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let start = boot + num(22) / hz;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let mut metric = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        cpu,
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        rss,
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        vsize,
    );
    metric(
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        fds as f64,
    );
    metric(
        "process_max_fds",
        "gauge",
        "The limit on open file descriptors.",
        max_fds,
    );
    metric("process_threads", "gauge", "OS threads.", threads);
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        start,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_series_come_out_sorted_with_histograms_whole() {
        let text = "# TYPE b_total counter\nb_total{x=\"2\"} 1\nb_total{x=\"1\"} 2\n\
                    # TYPE a_seconds histogram\na_seconds_bucket{s=\"z\",le=\"0.1\"} 1\n\
                    a_seconds_bucket{s=\"z\",le=\"+Inf\"} 1\na_seconds_sum{s=\"z\"} 0.05\n\
                    a_seconds_count{s=\"z\"} 1\na_seconds_bucket{s=\"y\",le=\"0.1\"} 0\n\
                    a_seconds_bucket{s=\"y\",le=\"+Inf\"} 0\na_seconds_sum{s=\"y\"} 0\n\
                    a_seconds_count{s=\"y\"} 0\n# HELP b_total Bees.\n";
        let out = sorted(text);
        let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines,
            [
                "# TYPE a_seconds histogram",
                "a_seconds_bucket{s=\"y\",le=\"0.1\"} 0",
                "a_seconds_bucket{s=\"y\",le=\"+Inf\"} 0",
                "a_seconds_sum{s=\"y\"} 0",
                "a_seconds_count{s=\"y\"} 0",
                "a_seconds_bucket{s=\"z\",le=\"0.1\"} 1",
                "a_seconds_bucket{s=\"z\",le=\"+Inf\"} 1",
                "a_seconds_sum{s=\"z\"} 0.05",
                "a_seconds_count{s=\"z\"} 1",
                "# HELP b_total Bees.",
                "# TYPE b_total counter",
                "b_total{x=\"1\"} 2",
                "b_total{x=\"2\"} 1",
            ]
        );
    }

    #[test]
    fn process_metrics_are_read_from_proc() {
        let text = process();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        assert!(
            value("process_resident_memory_bytes") > 1_000_000.0,
            "{text}"
        );
        assert!(value("process_open_fds") >= 3.0, "{text}");
        assert!(value("process_threads") >= 1.0, "{text}");
        assert!(value("process_start_time_seconds") > 1.6e9, "{text}");
    }
}
