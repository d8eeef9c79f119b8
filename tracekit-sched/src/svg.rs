//! Inline SVG charts for the HTML pages of `report` and `compare`: line and
//! step charts with axes, ticks and a legend, and a Gantt chart.
//!
//! Hand-written rather than drawn with a plotting crate: the Gantt chart
//! needs a hover title per task (an SVG `<title>`) and CSS classes per
//! profile so that ten thousand tasks stay a few MB, and the browser test
//! finds each chart by its id; a plotting backend gives neither, and the
//! rest is a frame, ticks and polylines.

use std::fmt::Write;

/// A categorical palette (Tableau 10), readable on white.
pub const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// Colour `i` of [`PALETTE`], cycling.
pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

const WIDTH: f64 = 960.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 48.0;

/// Escape text for XML content and attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Tick positions covering `[lo, hi]`: multiples of 1, 2 or 5 × 10^k, about
/// `target` of them.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label with as few decimals as the tick step needs.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let s = format!("{v:.decimals$}");
    if s == "-0" { "0".into() } else { s }
}

/// The unit of a time axis given in seconds: seconds, minutes or hours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeUnit {
    pub seconds: f64,
    pub name: &'static str,
}

impl TimeUnit {
    /// The unit that keeps a span of `span_s` seconds readable.
    pub fn for_span(span_s: f64) -> TimeUnit {
        if span_s > 3.0 * 3600.0 {
            TimeUnit {
                seconds: 3600.0,
                name: "h",
            }
        } else if span_s > 20.0 * 60.0 {
            TimeUnit {
                seconds: 60.0,
                name: "min",
            }
        } else {
            TimeUnit {
                seconds: 1.0,
                name: "s",
            }
        }
    }
}

/// One curve of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: String,
    pub points: Vec<(f64, f64)>,
    /// Draw as a step function (the value holds until the next point).
    pub step: bool,
    pub dashed: bool,
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// The `id` of the `<svg>` element.
    pub id: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub height: f64,
}

/// The data-to-pixel mapping of a plot area.
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    width: f64,
    height: f64,
}

impl Frame {
    fn new(x0: f64, x1: f64, y0: f64, y1: f64, height: f64) -> Frame {
        let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
        let y1 = if y1 > y0 { y1 } else { y0 + 1.0 };
        Frame {
            x0,
            x1,
            y0,
            y1,
            width: WIDTH,
            height,
        }
    }

    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * (self.width - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        self.height - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (self.height - TOP - BOTTOM)
    }

    /// Open the `<svg>`, draw the title, grid, ticks and axis labels.
    fn open(&self, out: &mut String, id: &str, title: &str, x_label: &str, y_label: &str) {
        let (w, h) = (self.width, self.height);
        let _ = write!(
            out,
            r#"<svg id="{id}" class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}">"#,
            id = esc(id),
            t = esc(title)
        );
        let _ = write!(
            out,
            r#"<text class="title" x="{LEFT}" y="18">{}</text>"#,
            esc(title)
        );
        let xt = nice_ticks(self.x0, self.x1, 10);
        let xs = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
        let yt = nice_ticks(self.y0, self.y1, 5);
        let ys = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
        let (top, bottom) = (TOP, h - BOTTOM);
        let (left, right) = (LEFT, w - RIGHT);
        out.push_str(r#"<g class="grid">"#);
        for &t in &yt {
            let y = self.py(t);
            let _ = write!(
                out,
                r#"<line x1="{left}" x2="{right}" y1="{y:.1}" y2="{y:.1}"/>"#
            );
        }
        out.push_str("</g>");
        let _ = write!(
            out,
            r#"<g class="axis"><line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}"/><line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}"/>"#
        );
        for &t in &xt {
            let x = self.px(t);
            let _ = write!(
                out,
                r#"<line x1="{x:.1}" x2="{x:.1}" y1="{bottom}" y2="{:.1}"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                bottom + 5.0,
                bottom + 18.0,
                tick_label(t, xs)
            );
        }
        for &t in &yt {
            let y = self.py(t);
            let _ = write!(
                out,
                r#"<line x1="{:.1}" x2="{left}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 5.0,
                left - 8.0,
                y + 4.0,
                tick_label(t, ys)
            );
        }
        let _ = write!(
            out,
            r#"<text class="label" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (left + right) / 2.0,
            h - 8.0,
            esc(x_label)
        );
        let _ = write!(
            out,
            r#"<text class="label" transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text></g>"#,
            (top + bottom) / 2.0,
            esc(y_label)
        );
    }
}

/// A legend row under the title: a swatch and a name per entry, and how
/// many did not fit.
fn legend(out: &mut String, entries: &[(String, String)]) {
    let mut x = LEFT;
    out.push_str(r#"<g class="legend">"#);
    for (i, (name, color)) in entries.iter().enumerate() {
        // Text width estimated from its length (no font metrics here).
        let width = 16.0 + 7.0 * name.chars().count() as f64 + 18.0;
        // Room is kept for the "+N more" that says what did not fit.
        if x + width > WIDTH - RIGHT - 70.0 {
            let _ = write!(
                out,
                r#"<text x="{x:.1}" y="37">+{} more</text>"#,
                entries.len() - i
            );
            break;
        }
        let _ = write!(
            out,
            r#"<rect x="{x:.1}" y="27" width="12" height="12" fill="{}"/><text x="{:.1}" y="37">{}</text>"#,
            esc(color),
            x + 16.0,
            esc(name)
        );
        x += width;
    }
    out.push_str("</g>");
}

/// Render a line chart.
pub fn line_chart(c: &LineChart) -> String {
    let pts = c.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in pts {
        if x.is_finite() && y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    // Head room above the highest point, to a tick.
    let top = nice_ticks(0.0, y1 * 1.05, 5).last().copied().unwrap_or(1.0);
    let frame = Frame::new(x0, x1, 0.0, top.max(y1), c.height);
    let mut out = String::with_capacity(4096);
    frame.open(&mut out, &c.id, &c.title, &c.x_label, &c.y_label);
    let entries: Vec<(String, String)> = c
        .series
        .iter()
        .map(|s| (s.name.clone(), s.color.clone()))
        .collect();
    legend(&mut out, &entries);
    for s in &c.series {
        if s.points.is_empty() {
            continue;
        }
        let mut d = String::with_capacity(s.points.len() * 14);
        let mut prev_y: Option<f64> = None;
        for &(x, y) in &s.points {
            let (px, py) = (frame.px(x), frame.py(y));
            match prev_y {
                None => {
                    let _ = write!(d, "M{px:.1} {py:.1}");
                }
                Some(last) if s.step => {
                    let _ = write!(d, "H{px:.1}");
                    if (last - py).abs() > 0.05 {
                        let _ = write!(d, "V{py:.1}");
                    }
                }
                Some(_) => {
                    let _ = write!(d, "L{px:.1} {py:.1}");
                }
            }
            prev_y = Some(py);
        }
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<path class="series" data-series="{}" d="{d}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            esc(&s.name),
            esc(&s.color)
        );
    }
    out.push_str("</svg>");
    out
}

/// A task on a Gantt chart: it waits from `queued` to `start` and runs to
/// `end` (x units), on `lane`, coloured by `class`.
#[derive(Debug, Clone)]
pub struct GanttBar {
    pub lane: usize,
    pub queued: f64,
    pub start: f64,
    pub end: f64,
    pub class: usize,
    pub title: String,
}

/// A Gantt chart: `groups` are (name, lanes) bands top to bottom (nodes),
/// `bars` sit on global lanes, `classes` name and colour each class.
pub struct Gantt<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub x_label: &'a str,
    pub groups: &'a [(String, usize)],
    pub bars: &'a [GanttBar],
    pub classes: &'a [(String, String)],
    pub x_max: f64,
}

/// Render a Gantt chart; a lane is at least 1 px and at most 24 px high.
pub fn gantt(g: &Gantt) -> String {
    let lanes: usize = g.groups.iter().map(|(_, n)| n).sum::<usize>().max(1);
    let lane_h = (900.0 / lanes as f64).clamp(1.0, 24.0);
    let height = TOP + BOTTOM + lanes as f64 * lane_h;
    let frame = Frame::new(0.0, g.x_max, 0.0, lanes as f64, height);
    let mut out = String::with_capacity(256 + g.bars.len() * 200);
    // The y axis counts lanes; its ticks are replaced by the node names.
    let _ = write!(
        out,
        r#"<svg id="{id}" class="chart gantt" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0}" width="{WIDTH}" height="{height:.0}" role="img" aria-label="{t}">"#,
        id = esc(g.id),
        t = esc(g.title)
    );
    out.push_str("<style>");
    for (i, (_, color)) in g.classes.iter().enumerate() {
        let _ = write!(out, ".c{i}{{fill:{color}}}");
    }
    out.push_str(".gantt .w{fill-opacity:.28}</style>");
    let _ = write!(
        out,
        r#"<text class="title" x="{LEFT}" y="18">{}</text>"#,
        esc(g.title)
    );
    let mut entries: Vec<(String, String)> = g.classes.to_vec();
    entries.push(("waiting (light)".into(), "#d9d9d9".into()));
    legend(&mut out, &entries);
    let xt = nice_ticks(0.0, g.x_max, 10);
    let xs = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
    let bottom = height - BOTTOM;
    out.push_str(r#"<g class="axis">"#);
    for &t in &xt {
        let x = frame.px(t);
        let _ = write!(
            out,
            r#"<line class="gridx" x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{bottom:.1}"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            bottom + 18.0,
            tick_label(t, xs)
        );
    }
    let mut lane0 = 0usize;
    for (name, n) in g.groups {
        let y_top = TOP + lane0 as f64 * lane_h;
        let y_bot = y_top + *n as f64 * lane_h;
        let _ = write!(
            out,
            r#"<line x1="{LEFT}" x2="{:.1}" y1="{y_bot:.1}" y2="{y_bot:.1}"/><text class="tick node" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            (y_top + y_bot) / 2.0 + 4.0,
            esc(name)
        );
        lane0 += n;
    }
    let _ = write!(
        out,
        r#"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom:.1}"/><text class="label" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text></g>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        height - 8.0,
        esc(g.x_label)
    );
    let bar_h = (lane_h * 0.8).max(1.0);
    for b in g.bars {
        let y = TOP + b.lane as f64 * lane_h + (lane_h - bar_h) / 2.0;
        let (xq, xs_, xe) = (frame.px(b.queued), frame.px(b.start), frame.px(b.end));
        let _ = write!(
            out,
            r#"<g class="task c{}"><title>{}</title>"#,
            b.class,
            esc(&b.title)
        );
        if xs_ - xq >= 0.1 {
            let _ = write!(
                out,
                r#"<rect class="w" x="{xq:.1}" y="{y:.1}" width="{:.1}" height="{bar_h:.1}"/>"#,
                xs_ - xq
            );
        }
        // A run always shows, however short.
        let _ = write!(
            out,
            r#"<rect class="r" x="{xs_:.1}" y="{y:.1}" width="{:.1}" height="{bar_h:.1}"/></g>"#,
            (xe - xs_).max(0.8)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(
            nice_ticks(0.0, 0.9, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8]
        );
        assert_eq!(nice_ticks(0.0, 0.9, 4), vec![0.0, 0.5]);
        assert_eq!(tick_label(0.6000000000000001, 0.2), "0.6");
        assert_eq!(nice_ticks(5.0, 5.0, 4), vec![5.0]);
    }

    #[test]
    fn a_long_legend_says_what_did_not_fit() {
        let entries: Vec<(String, String)> = (0..30)
            .map(|i| (format!("node-{i:02}"), color(i).to_string()))
            .collect();
        let mut out = String::new();
        legend(&mut out, &entries);
        let shown = out.matches("<rect").count();
        assert!(shown > 5 && shown < 30, "{shown}");
        assert!(out.contains(&format!("+{} more", 30 - shown)), "{out}");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&#39;");
    }

    #[test]
    fn line_chart_has_id_axes_and_paths() {
        let svg = line_chart(&LineChart {
            id: "c1".into(),
            title: "T <1>".into(),
            x_label: "s".into(),
            y_label: "n".into(),
            series: vec![Series {
                name: "a".into(),
                color: color(0).into(),
                points: vec![(0.0, 0.0), (1.0, 2.0), (2.0, 1.0)],
                step: true,
                dashed: false,
            }],
            height: 300.0,
        });
        assert!(svg.starts_with(r#"<svg id="c1""#));
        assert!(svg.contains("T &lt;1&gt;"));
        assert!(svg.contains(r#"class="series""#));
        assert!(svg.contains("H"));
        assert!(svg.ends_with("</svg>"));
    }
}
