//! An SVG timeline of one run: the relay and each device as lanes,
//! messages as lines from sender to receiver, faults as red marks, and the
//! point after which each device received nothing more (where it converged).

use std::fmt::Write;

/// What a run records for its picture (only when asked: sweeps skip it).
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    /// Lane names; lane 0 is the relay.
    pub lanes: Vec<String>,
    /// (from lane, to lane, sent at, delivered at), virtual ms.
    pub messages: Vec<(usize, usize, u64, u64)>,
    /// (lane, at, label): faults and notable events.
    pub marks: Vec<(usize, u64, String)>,
    /// When the heal phase began.
    pub heal_at: Option<u64>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Timeline {
    pub fn render(&self, title: &str) -> String {
        const LEFT: f64 = 90.0;
        const WIDTH: f64 = 1400.0;
        const LANE: f64 = 48.0;
        let end =
            self.messages.iter().map(|m| m.3).chain(self.marks.iter().map(|m| m.1)).max().unwrap_or(1).max(1) as f64;
        let x = |t: u64| LEFT + (t as f64 / end) * (WIDTH - LEFT - 20.0);
        let y = |lane: usize| 50.0 + lane as f64 * LANE;
        let height = y(self.lanes.len()) + 10.0;
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="monospace" font-size="11">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(out, r#"<text x="10" y="20" font-size="13">{}</text>"#, escape(title));
        for (i, name) in self.lanes.iter().enumerate() {
            let _ = writeln!(
                out,
                r##"<text x="10" y="{:.1}">{}</text><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999"/>"##,
                y(i) + 4.0,
                escape(name),
                y(i),
                WIDTH - 20.0,
                y(i)
            );
        }
        if let Some(h) = self.heal_at {
            let _ = writeln!(
                out,
                r##"<line x1="{:.1}" y1="30" x2="{:.1}" y2="{height}" stroke="#2a2" stroke-dasharray="4 3"/><text x="{:.1}" y="38" fill="#2a2">heal</text>"##,
                x(h),
                x(h),
                x(h) + 3.0
            );
        }
        for &(from, to, sent, delivered) in &self.messages {
            let colour = if to == 0 { "#3465a4" } else { "#ce5c00" };
            let _ = writeln!(
                out,
                r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="0.7" opacity="0.7"/>"#,
                x(sent),
                y(from),
                x(delivered),
                y(to)
            );
        }
        for (lane, at, label) in &self.marks {
            let _ = writeln!(
                out,
                r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#c00"><title>{} ms: {}</title></circle>"##,
                x(*at),
                y(*lane),
                at,
                escape(label)
            );
        }
        // Where each device converged: the last message it received.
        for lane in 1..self.lanes.len() {
            if let Some(last) = self.messages.iter().filter(|m| m.1 == lane).map(|m| m.3).max() {
                let (cx, cy) = (x(last), y(lane));
                let _ = writeln!(
                    out,
                    r##"<path d="M{:.1} {:.1} l6 6 l-6 6 l-6 -6 z" fill="#2a2"><title>{} converged at {} ms</title></path>"##,
                    cx,
                    cy - 6.0,
                    escape(&self.lanes[lane]),
                    last
                );
            }
        }
        let _ = writeln!(
            out,
            r##"<text x="{LEFT}" y="{:.1}" fill="#555">0 ms</text><text x="{:.1}" y="{:.1}" fill="#555" text-anchor="end">{} ms</text>"##,
            height - 2.0,
            WIDTH - 20.0,
            height - 2.0,
            end as u64
        );
        out.push_str("</svg>\n");
        out
    }
}
