//! The eviction map of a [`Trace`]: one KV head's resident positions after
//! every recorded call, drawn as a standalone SVG (recorded call across,
//! token position up). Dependency-free: the SVG is written as text.

use core::fmt::Write;

use super::Trace;

/// What a position was after one recorded call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    /// Not inserted yet.
    Absent,
    /// Resident, one of the newest `recent` residents.
    Recent,
    /// Resident outside the recent window, kept for its score.
    Heavy,
    /// Resident attention sink (a position below `sinks`), outside the window.
    Sink,
    /// Evicted (never comes back).
    Evicted,
}

impl Cell {
    fn colour(self) -> Option<&'static str> {
        match self {
            Cell::Absent => None,
            Cell::Recent => Some("#78aadc"),
            Cell::Heavy => Some("#f08c1e"),
            Cell::Sink => Some("#783ca0"),
            Cell::Evicted => Some("#e1e1e1"),
        }
    }
}

const LEGEND: [(&str, Cell); 4] = [
    ("recent window", Cell::Recent),
    ("heavy hitter", Cell::Heavy),
    ("sink", Cell::Sink),
    ("evicted", Cell::Evicted),
];

impl Trace {
    /// The eviction map of KV head `head` as an SVG document: one column per
    /// record of that head (in recording order), one row per token position
    /// (0 at the bottom). A resident position is drawn as a recent-window
    /// token (blue) if it is one of the newest `recent_window` residents, as
    /// an attention sink (purple) if its position is below `sinks`, and as a
    /// heavy hitter (orange) otherwise; evicted positions are light grey from
    /// their eviction on. Pass the policy's
    /// [`recent_window`](crate::EvictionPolicy::recent_window) and
    /// [`sinks`](crate::EvictionPolicy::sinks). `title` is escaped.
    ///
    /// Consecutive records in the same state are merged into one rectangle,
    /// so the size grows with the number of state changes, not with
    /// steps × positions. A trace with no record of `head` gives an empty
    /// map with its axes. Allocates the returned `String`; does not panic.
    ///
    /// # Example
    /// ```
    /// use h2o_kv::{H2OCache, KvCache, Trace};
    ///
    /// let mut cache = H2OCache::<f32>::new(2, 1, 1)?;
    /// let mut trace = Trace::default();
    /// for t in 0..6 {
    ///     cache.step(&[1.0, 0.0], &[if t == 0 { 3.0 } else { 0.0 }, 1.0], &[0.5, 0.5])?;
    ///     trace.record(0, cache.planner());
    /// }
    /// let svg = trace.eviction_map_svg(0, 1, 0, "H2O, 1 heavy + 1 recent");
    /// assert!(svg.starts_with("<svg") && svg.contains("heavy hitter"));
    /// # Ok::<(), h2o_kv::Error>(())
    /// ```
    #[must_use]
    pub fn eviction_map_svg(
        &self,
        head: usize,
        recent_window: usize,
        sinks: usize,
        title: &str,
    ) -> String {
        let grid = self.cells(head, recent_window, sinks as u64);
        let columns = grid.len();
        let rows = grid.iter().map(Vec::len).max().unwrap_or(0);
        render(&grid, columns.max(1), rows.max(1), title)
    }

    /// `[records of head][positions]`: each position's state after each
    /// record of `head`.
    fn cells(&self, head: usize, recent: usize, sinks: u64) -> Vec<Vec<Cell>> {
        let mut grid: Vec<Vec<Cell>> = Vec::new();
        let mut prev: Vec<Cell> = Vec::new();
        for step in self.steps().iter().filter(|s| s.head == head) {
            let mut col = prev.clone();
            // Whatever was resident and is not now has been evicted.
            for c in &mut col {
                if matches!(c, Cell::Recent | Cell::Heavy | Cell::Sink) {
                    *c = Cell::Evicted;
                }
            }
            let window_start = step.kept.len().saturating_sub(recent);
            for (i, &(p, _)) in step.kept.iter().enumerate() {
                let Ok(p) = usize::try_from(p) else { continue };
                if col.len() <= p {
                    col.resize(p + 1, Cell::Absent);
                }
                col[p] = if i >= window_start {
                    Cell::Recent
                } else if (p as u64) < sinks {
                    Cell::Sink
                } else {
                    Cell::Heavy
                };
            }
            for &p in &step.evicted {
                if let Some(c) = usize::try_from(p).ok().and_then(|p| col.get_mut(p)) {
                    *c = Cell::Evicted;
                }
            }
            prev.clone_from(&col);
            grid.push(col);
        }
        grid
    }
}

/// Writes the SVG: a plot area of `columns × rows` cells, axes, ticks, a
/// title and a legend.
fn render(grid: &[Vec<Cell>], columns: usize, rows: usize, title: &str) -> String {
    let (width, height) = (760.0, 520.0);
    let (left, right, top, bottom) = (64.0, 150.0, 40.0, 52.0);
    let (pw, ph) = (width - left - right, height - top - bottom);
    let (cw, ch) = (pw / columns as f64, ph / rows as f64);
    let x = |c: usize| left + c as f64 * cw;
    let y = |r: usize| top + ph - r as f64 * ch; // position r's bottom edge
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16">{}</text>"#,
        left + pw / 2.0,
        escape(title)
    );
    // Cells: one rectangle per run of equal states along a position's row.
    for r in 0..rows {
        let state = |c: usize| grid[c].get(r).copied().unwrap_or(Cell::Absent);
        let mut c = 0;
        while c < columns.min(grid.len()) {
            let cell = state(c);
            let start = c;
            while c < grid.len() && state(c) == cell {
                c += 1;
            }
            if let Some(colour) = cell.colour() {
                let _ = writeln!(
                    s,
                    r#"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="{colour}"/>"#,
                    x(start),
                    y(r + 1),
                    (c - start) as f64 * cw,
                    ch
                );
            }
        }
    }
    // Axes and ticks.
    let _ = writeln!(
        s,
        r#"<path d="M{left} {top} V{} H{}" fill="none" stroke="black"/>"#,
        top + ph,
        left + pw
    );
    for c in ticks(columns) {
        let cx = x(c) + cw / 2.0;
        let _ = writeln!(
            s,
            r#"<line x1="{cx:.2}" y1="{0}" x2="{cx:.2}" y2="{1}" stroke="black"/><text x="{cx:.2}" y="{2}" text-anchor="middle">{c}</text>"#,
            top + ph,
            top + ph + 5.0,
            top + ph + 18.0
        );
    }
    for r in ticks(rows) {
        let cy = y(r) - ch / 2.0;
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{cy:.2}" x2="{left}" y2="{cy:.2}" stroke="black"/><text x="{1}" y="{2:.2}" text-anchor="end">{r}</text>"#,
            left - 5.0,
            left - 8.0,
            cy + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">recorded call (decode step)</text>"#,
        left + pw / 2.0,
        height - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})">token position</text>"#,
        top + ph / 2.0
    );
    for (i, (label, cell)) in LEGEND.iter().enumerate() {
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = width - right + 14.0;
        let colour = cell.colour().unwrap_or("white");
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{ly}" width="12" height="12" fill="{colour}" stroke="black" stroke-width="0.5"/><text x="{}" y="{}">{label}</text>"#,
            lx + 18.0,
            ly + 10.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// About ten evenly spaced tick indices in `0..n`, always including 0.
fn ticks(n: usize) -> impl Iterator<Item = usize> {
    let step = n.div_ceil(10).max(1);
    let step = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000]
        .into_iter()
        .find(|&s| s >= step)
        .unwrap_or(step);
    (0..n).step_by(step)
}

/// `text` with XML's special characters escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::{H2OSinks, KvCache, LayerCache, RecentOnly, Trace};

    use super::Cell;

    /// H2O(1 heavy, 1 recent) by hand: token 0 draws the attention and
    /// becomes the heavy hitter, every other token passes through the window
    /// and is evicted the step after.
    #[test]
    fn cells_by_hand() {
        let mut c = crate::H2OCache::<f64>::new(1, 1, 1).unwrap().with_scale(1.0).unwrap();
        let mut trace = Trace::default();
        for t in 0..4 {
            c.step(&[1.0], &[if t == 0 { 5.0 } else { 0.0 }], &[1.0]).unwrap();
            trace.record(0, c.planner());
        }
        let grid = trace.cells(0, 1, 0);
        use Cell::{Absent as A, Evicted as E, Heavy as H, Recent as R};
        assert_eq!(grid[0], [R]);
        assert_eq!(grid[1], [H, R]);
        assert_eq!(grid[2], [H, E, R]);
        assert_eq!(grid[3], [H, E, E, R]);
        assert!(grid.iter().all(|col| !col.contains(&A)));
        let svg = trace.eviction_map_svg(0, 1, 0, "a <title> & more");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;title&gt; &amp; more"));
        // Runs are merged: token 0 is one rectangle for its recent step and
        // one for its three heavy steps.
        assert_eq!(svg.matches(r##"fill="#f08c1e""##).count(), 2); // + the legend's
    }

    #[test]
    fn sinks_and_heads_are_told_apart() {
        let mut layer =
            LayerCache::<f32, _>::new(2, 2, 1, H2OSinks::new(2, 1, 1).unwrap()).unwrap();
        let mut trace = Trace::default();
        for _ in 0..5 {
            layer.step(&[1.0, 1.0], &[0.5, 0.5], &[1.0, 1.0]).unwrap();
            trace.record_layer(&layer);
        }
        let grid = trace.cells(1, 1, 1);
        assert_eq!(grid.len(), 5);
        assert_eq!(grid[4][0], Cell::Sink);
        assert_eq!(grid[4][4], Cell::Recent);
        assert!(trace.cells(2, 1, 1).is_empty());
        // No record of head 2: an empty map with its axes.
        assert!(trace.eviction_map_svg(2, 1, 1, "none").contains("token position"));
        let mut w = RecentOnly::<f32>::new(1, 2).unwrap();
        let mut t = Trace::default();
        for _ in 0..3 {
            w.step(&[1.0], &[1.0], &[1.0]).unwrap();
            t.record(0, w.planner());
        }
        assert_eq!(t.cells(0, 2, 0)[2], [Cell::Evicted, Cell::Recent, Cell::Recent]);
    }
}
