//! `spooky top`: a live view of a running instance in the terminal, from its admin listener's
//! `GET /status` — the stage chain drawn as boxes left to right (queue, inflight, rates in and
//! out, shed, refusals), and below it every upstream's backends (state, inflight, latency,
//! error rate). Refreshes every second; `q` (or Esc, Ctrl-C) quits. On a terminal too narrow
//! for the boxes the chain becomes a table; when the instance stops answering the last view
//! stays, marked with the error and its age.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use serde_json::Value;

/// How often the view is refreshed.
const EVERY: Duration = Duration::from_secs(1);
/// Narrowest box a stage is drawn in; below it the chain is a table.
const BOX_WIDTH: u16 = 14;

/// What the screen shows: the latest answer, the one before (for error rates), and why the
/// latest fetch failed, if it did.
#[derive(Default)]
pub struct View {
    pub status: Option<Value>,
    pub previous: Option<Value>,
    pub error: Option<String>,
    /// Seconds since the shown status was fetched (when the latest fetch failed).
    pub stale_for: Option<u64>,
}

/// Runs the view until `q`. `admin` is the admin listener; `token` its bearer token.
pub fn run(admin: SocketAddr, token: Option<String>) -> std::io::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let mut terminal = ratatui::init();
    let mut view = View::default();
    let mut fetched_at = Instant::now();
    let mut next = Instant::now();
    let result = loop {
        if Instant::now() >= next {
            match fetch(admin, token.as_deref()) {
                Ok(v) => {
                    view.previous = view.status.replace(v);
                    view.error = None;
                    view.stale_for = None;
                    fetched_at = Instant::now();
                }
                Err(e) => {
                    view.error = Some(e);
                    view.stale_for = view.status.as_ref().map(|_| fetched_at.elapsed().as_secs());
                }
            }
            next = Instant::now() + EVERY;
        }
        if let Err(e) = terminal.draw(|f| draw(f, &view, admin)) {
            break Err(e);
        }
        let wait = next.saturating_duration_since(Instant::now());
        match event::poll(wait) {
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        break Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => break Err(e),
            },
            Ok(false) => {}
            Err(e) => break Err(e),
        }
    };
    ratatui::restore();
    result
}

/// `GET /status` from the admin listener, as JSON.
pub fn fetch(admin: SocketAddr, token: Option<&str>) -> Result<Value, String> {
    match get(admin, "/status", token)? {
        (200, body) => serde_json::from_str(&body).map_err(|e| format!("/status is not JSON: {e}")),
        (s @ (401 | 403), _) => Err(format!(
            "/status answered {s}: pass the admin token with --token-file"
        )),
        (s, _) => Err(format!("/status answered {s}")),
    }
}

/// `GET path` on the admin listener (plain HTTP/1.1, one connection, bounded by a
/// two-second timeout): the status and the body.
pub fn get(admin: SocketAddr, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(2);
    let fail = |e: std::io::Error| format!("{admin}: {e}");
    let mut s = TcpStream::connect_timeout(&admin, timeout).map_err(fail)?;
    s.set_read_timeout(Some(timeout)).map_err(fail)?;
    s.set_write_timeout(Some(timeout)).map_err(fail)?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\n{auth}Connection: close\r\n\r\n"
    )
    .map_err(fail)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(fail)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{admin}: not an HTTP answer"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("{admin}: not an HTTP answer"))?;
    Ok((status, body.to_string()))
}

/// A stage's queue: waiting of room, or `fused` when it has none.
fn queue(s: &Value) -> String {
    if num(s, "queue") > 0.0 {
        format!("{}/{}", s["waiting"], s["queue"])
    } else {
        "fused".into()
    }
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

fn rate(v: &Value, key: &str) -> String {
    match v["per_second"][key].as_f64() {
        Some(r) if r >= 100.0 => format!("{r:.0}/s"),
        Some(r) => format!("{r:.1}/s"),
        None => "-".into(),
    }
}

/// Draws the whole view into `f`.
pub fn draw(f: &mut Frame<'_>, view: &View, admin: SocketAddr) {
    let area = f.area();
    let stages = view
        .status
        .as_ref()
        .and_then(|s| s["stages"].as_array())
        .cloned()
        .unwrap_or_default();
    let boxes = !stages.is_empty() && area.width / stages.len() as u16 >= BOX_WIDTH;
    let chain_height = if boxes { 8 } else { stages.len() as u16 + 3 };
    // Never more than the screen leaves after the header, the upstreams' three lines and the
    // footer (a short terminal cuts the chain, not the layout).
    let chain_height = chain_height.min(area.height.saturating_sub(6));
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(2),
            Constraint::Length(chain_height),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .split(area);
    f.render_widget(header(view, admin), rows[0]);
    if boxes {
        draw_boxes(f, rows[1], &stages);
    } else {
        f.render_widget(stage_table(&stages, rows[1].width), rows[1]);
    }
    f.render_widget(upstream_table(view, rows[2].width), rows[2]);
    f.render_widget(
        Paragraph::new("q quit · refreshes every second").style(Style::new().fg(Color::DarkGray)),
        rows[3],
    );
}

fn header(view: &View, admin: SocketAddr) -> Paragraph<'static> {
    let mut lines = Vec::new();
    match &view.status {
        Some(s) => lines.push(Line::from(vec![
            Span::styled(
                format!("spooky top · {}", s["pipeline"].as_str().unwrap_or("?")),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!(
                "  v{} · pid {} · generation {} · up {} s · {} live · {}",
                s["version"].as_str().unwrap_or("?"),
                s["pid"],
                s["generation"],
                s["uptime_seconds"],
                s["live_exchanges"],
                if s["ready"].as_bool() == Some(true) {
                    "ready"
                } else {
                    "not ready"
                }
            )),
        ])),
        None => lines.push(Line::from(format!("spooky top · {admin}"))),
    }
    if let Some(e) = &view.error {
        let age = view.stale_for.map_or(String::new(), |s| {
            format!(" (showing the view of {s} s ago)")
        });
        lines.push(Line::styled(
            format!("not answering: {e}{age}"),
            Style::new().fg(Color::Red),
        ));
    }
    Paragraph::new(lines)
}

/// The chain as boxes, left to right.
fn draw_boxes(f: &mut Frame<'_>, area: Rect, stages: &[Value]) {
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints(vec![
            Constraint::Ratio(1, stages.len() as u32);
            stages.len()
        ])
        .split(area);
    for (s, col) in stages.iter().zip(cols.iter()) {
        let shedding = s["per_second"]["rejected"].as_f64().unwrap_or(0.0) > 0.0;
        let full = num(s, "inflight") >= num(s, "concurrency");
        let color = if shedding {
            Color::Red
        } else if full {
            Color::Yellow
        } else {
            Color::Reset
        };
        let lines = vec![
            Line::from(format!("in  {}", rate(s, "received"))),
            Line::from(format!("out {}", rate(s, "emitted"))),
            Line::from(format!("inf {}/{}", s["inflight"], s["concurrency"])),
            Line::from(format!("q   {}", queue(s))),
            Line::from(format!("shd {}", rate(s, "rejected"))),
            Line::from(format!("rej {}", s["rejected"])),
        ];
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(Style::new().fg(color))
            .title(s["stage"].as_str().unwrap_or("?").to_string());
        f.render_widget(Paragraph::new(lines).block(block), *col);
    }
}

/// Column widths that fit `width` (inside a border, one space between columns): the first
/// column takes what the others leave, and columns are cut from the right when even that is
/// not enough. Exact lengths that always fit keep the layout deterministic (constraints the
/// solver cannot all meet may be broken differently from run to run).
fn fit(first_min: u16, rest: &[u16], width: u16) -> Vec<Constraint> {
    let inner = width.saturating_sub(2);
    let mut out = Vec::with_capacity(rest.len() + 1);
    let mut used = first_min;
    let mut kept = Vec::new();
    for w in rest {
        if used + 1 + w > inner {
            break;
        }
        used += 1 + w;
        kept.push(*w);
    }
    let first = inner.saturating_sub(used - first_min);
    out.push(Constraint::Length(first));
    out.extend(kept.into_iter().map(Constraint::Length));
    out
}

/// The chain as a table (a terminal too narrow for boxes).
fn stage_table(stages: &[Value], width: u16) -> Table<'static> {
    let rows = stages.iter().map(|s| {
        Row::new(vec![
            s["stage"].as_str().unwrap_or("?").to_string(),
            rate(s, "received"),
            format!("{}/{}", s["inflight"], s["concurrency"]),
            queue(s),
            rate(s, "rejected"),
        ])
    });
    Table::new(rows, fit(11, &[8, 10, 8, 8], width))
        .header(
            Row::new(vec!["stage", "in", "inflight", "queue", "shed"])
                .style(Style::new().fg(Color::DarkGray)),
        )
        .block(Block::default().borders(Borders::ALL).title("pipeline"))
}

/// Each upstream's backends: state, inflight, latency, error rate since the previous view.
fn upstream_table(view: &View, width: u16) -> Table<'static> {
    let ups = view
        .status
        .as_ref()
        .and_then(|s| s["upstreams"].as_array())
        .cloned()
        .unwrap_or_default();
    let before = |u: &str, id: &str| -> Option<(f64, f64)> {
        let prev = view.previous.as_ref()?["upstreams"].as_array()?.clone();
        let pu = prev.iter().find(|p| p["name"] == u)?;
        let pb = pu["backends"].as_array()?.iter().find(|b| b["id"] == id)?;
        Some((num(pb, "requests"), num(pb, "errors")))
    };
    let mut rows = Vec::new();
    for u in &ups {
        let name = u["name"].as_str().unwrap_or("?");
        for b in u["backends"].as_array().into_iter().flatten() {
            let id = b["id"].as_str().unwrap_or("?");
            let state = b["state"].as_str().unwrap_or("?").to_string();
            let color = match state.as_str() {
                "up" => Color::Green,
                "drained" => Color::Yellow,
                _ => Color::Red,
            };
            let errors = match before(name, id) {
                Some((r0, e0)) if num(b, "requests") > r0 => format!(
                    "{:.1}%",
                    100.0 * (num(b, "errors") - e0) / (num(b, "requests") - r0)
                ),
                Some(_) => "0.0%".into(),
                None => "-".into(),
            };
            let latency = b["latency_ewma_ms"]
                .as_f64()
                .map_or("-".into(), |l| format!("{l:.1} ms"));
            rows.push(Row::new(vec![
                ratatui::text::Text::from(format!("{name}/{id}")),
                ratatui::text::Text::styled(state, Style::new().fg(color)),
                ratatui::text::Text::from(format!("{}/{}", b["inflight"], b["max_inflight"])),
                ratatui::text::Text::from(latency),
                ratatui::text::Text::from(errors),
            ]));
        }
    }
    Table::new(rows, fit(16, &[12, 9, 9, 7], width))
        .header(
            Row::new(vec!["backend", "state", "inflight", "latency", "errors"])
                .style(Style::new().fg(Color::DarkGray)),
        )
        .block(Block::default().borders(Borders::ALL).title("upstreams"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    /// A known `/status` answer (and the one a second before it).
    fn snapshot(requests: f64, errors: f64, rejected: f64) -> Value {
        let stage = |name: &str, inflight: u64, queue: u64| {
            serde_json::json!({
                "stage": name, "inflight": inflight, "concurrency": 64, "waiting": 0,
                "queue": queue, "received": 1200, "emitted": 1190, "rejected": 10,
                "per_second": { "received": 120.0, "emitted": 118.5, "rejected": rejected },
            })
        };
        serde_json::json!({
            "version": "0.1.0", "pid": 4242, "pipeline": "edge", "uptime_seconds": 93,
            "generation": 3, "ready": true, "live_exchanges": 7,
            "stages": [
                stage("ingress", 2, 0), stage("admission", 5, 0), stage("route", 0, 0),
                stage("queue", 0, 0), stage("select", 1, 0), stage("hedge-retry", 0, 0),
                stage("dispatch", 5, 256), stage("egress", 2, 0),
            ],
            "upstreams": [{
                "name": "app", "balance": "p2c", "inflight": 5, "max_inflight": 1024,
                "backends": [
                    { "id": "10.0.0.1:8080", "state": "up", "inflight": 3, "max_inflight": 256,
                      "latency_ewma_ms": 1.25, "weight": 1, "requests": requests, "errors": errors },
                    { "id": "10.0.0.2:8080", "state": "unhealthy", "inflight": 0, "max_inflight": 256,
                      "latency_ewma_ms": null, "weight": 1, "requests": 40.0, "errors": 40.0 },
                ],
            }],
        })
    }

    fn render(view: &View, width: u16, height: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(width, height)).expect("terminal");
        let admin: SocketAddr = "127.0.0.1:9901".parse().expect("addr");
        t.draw(|f| draw(f, view, admin)).expect("draw");
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            let line: String = (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect();
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Compares with `tests/golden/NAME` (`UPDATE_GOLDEN=1` rewrites it).
    fn golden(name: &str, got: &str) {
        let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, got).expect("write golden");
        }
        let want = std::fs::read_to_string(&path).expect("golden file");
        assert_eq!(got, want, "{name} differs from the golden file:\n{got}");
    }

    fn view() -> View {
        View {
            previous: Some(snapshot(1000.0, 10.0, 0.0)),
            status: Some(snapshot(1100.0, 15.0, 2.5)),
            error: None,
            stale_for: None,
        }
    }

    #[test]
    fn wide_terminal_draws_the_chain_as_boxes() {
        let got = render(&view(), 120, 24);
        golden("top_120x24.txt", &got);
        assert!(got.contains("ingress") && got.contains("egress"));
        assert!(
            got.contains("5.0%"),
            "error rate over the last second: {got}"
        );
    }

    #[test]
    fn narrow_terminal_draws_the_chain_as_a_table() {
        let got = render(&view(), 60, 24);
        golden("top_60x24.txt", &got);
    }

    #[test]
    fn an_instance_that_stops_answering_keeps_its_last_view() {
        let mut v = view();
        v.error = Some("127.0.0.1:9901: Connection refused".into());
        v.stale_for = Some(4);
        let got = render(&v, 120, 24);
        golden("top_down_120x24.txt", &got);
        assert!(got.contains("not answering") && got.contains("4 s ago"));
        let none = render(
            &View {
                error: v.error.clone(),
                ..View::default()
            },
            80,
            12,
        );
        assert!(none.contains("not answering"), "{none}");
    }
}
