//! Eviction maps: which positions one KV head holds after every decode step,
//! drawn as an SVG (decode step across, position up; resident, evicted and
//! heavy hitters in different colours).
//!
//! A token is resident over one contiguous run of steps (an evicted position
//! never comes back), and becomes a heavy hitter when it leaves the recent
//! window and is kept for its score, so the map is recorded as at most three
//! spans per position and drawn as rectangles: a few thousand SVG elements
//! for a 512-token run, whatever the number of steps.

use std::path::Path;

use plotters::prelude::*;

/// The life of one position in the cache, in decode steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Life {
    /// First step it was resident.
    inserted: u64,
    /// First step it was held outside the recent window (kept by score).
    heavy_from: Option<u64>,
    /// First step it was no longer resident.
    evicted: Option<u64>,
    /// An attention sink (kept unconditionally).
    sink: bool,
}

/// The residency of one KV head over a run, step by step.
///
/// # Example
/// ```
/// use llama2c::eviction_map::EvictionMap;
///
/// let mut map = EvictionMap::default();
/// map.record(0, &[0], 2, 0);
/// map.record(1, &[0, 1], 2, 0);
/// map.record(2, &[0, 2], 1, 0); // 1 evicted, 0 kept for its score
/// assert_eq!(map.counts(), (2, 1, 1)); // resident, heavy, evicted after the last step
/// ```
#[derive(Debug, Clone, Default)]
pub struct EvictionMap {
    /// Indexed by position.
    lives: Vec<Option<Life>>,
    /// Steps recorded.
    steps: u64,
}

impl EvictionMap {
    /// Records the state after decode step `step` (0, 1, 2, … in order):
    /// the resident positions in any order, the recent-window length and the
    /// number of attention sinks of the policy. Residents outside the newest
    /// `recent` and not sinks count as heavy hitters.
    pub fn record(&mut self, step: u64, resident: &[u64], recent: usize, n_sink: usize) {
        let mut sorted = resident.to_vec();
        sorted.sort_unstable();
        let window_start = sorted.len().saturating_sub(recent);
        let max = sorted.last().map_or(0, |&p| p as usize + 1);
        if self.lives.len() < max {
            self.lives.resize(max, None);
        }
        for (p, life) in self.lives.iter_mut().enumerate() {
            let Some(life) = life else { continue };
            if life.evicted.is_none() && sorted.binary_search(&(p as u64)).is_err() {
                life.evicted = Some(step);
            }
        }
        for (i, &p) in sorted.iter().enumerate() {
            let sink = (p as usize) < n_sink;
            let life = self.lives[p as usize].get_or_insert(Life {
                inserted: step,
                heavy_from: None,
                evicted: None,
                sink,
            });
            if i < window_start && !sink && life.heavy_from.is_none() {
                life.heavy_from = Some(step);
            }
        }
        self.steps = self.steps.max(step + 1);
    }

    /// After the last recorded step: (resident, of which heavy hitters, evicted).
    #[must_use]
    pub fn counts(&self) -> (usize, usize, usize) {
        let lives = self.lives.iter().flatten();
        let resident = lives.clone().filter(|l| l.evicted.is_none()).count();
        let heavy = lives.clone().filter(|l| l.evicted.is_none() && l.heavy_from.is_some()).count();
        let evicted = lives.filter(|l| l.evicted.is_some()).count();
        (resident, heavy, evicted)
    }

    /// Draws the map as an SVG at `path`: decode step on x, position on y;
    /// recent (blue), heavy hitter (orange), sink (purple), evicted (light
    /// grey), not yet inserted (white).
    ///
    /// # Errors
    /// A message if drawing or writing the file fails.
    pub fn render_svg(&self, path: &Path, title: &str) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let (steps, positions) = (self.steps.max(1), self.lives.len().max(1) as u64);
        let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0u64..steps, 0u64..positions)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("decode step")
            .y_desc("token position")
            .draw()
            .map_err(|e| err(&e))?;
        const RECENT: RGBColor = RGBColor(120, 170, 220);
        const HEAVY: RGBColor = RGBColor(240, 140, 30);
        const SINK: RGBColor = RGBColor(120, 60, 160);
        const EVICTED: RGBColor = RGBColor(225, 225, 225);
        let mut rects = Vec::new();
        for (p, life) in self.lives.iter().enumerate() {
            let Some(l) = life else { continue };
            let p = p as u64;
            let end = l.evicted.unwrap_or(steps);
            let kept_colour = if l.sink { SINK } else { RECENT };
            let heavy_at = l.heavy_from.unwrap_or(end).min(end);
            if heavy_at > l.inserted {
                rects.push(([(l.inserted, p), (heavy_at, p + 1)], kept_colour));
            }
            if end > heavy_at {
                rects.push(([(heavy_at, p), (end, p + 1)], HEAVY));
            }
            if end < steps {
                rects.push(([(end, p), (steps, p + 1)], EVICTED));
            }
        }
        chart
            .draw_series(rects.into_iter().map(|(r, c)| Rectangle::new(r, c.filled())))
            .map_err(|e| err(&e))?;
        for (label, colour) in [
            ("recent window", RECENT),
            ("heavy hitter", HEAVY),
            ("sink", SINK),
            ("evicted", EVICTED),
        ] {
            chart
                .draw_series(std::iter::empty::<Rectangle<(u64, u64)>>())
                .map_err(|e| err(&e))?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lives_by_hand() {
        // H2O(1, 1): step 2 evicts 1 and keeps 0 as a heavy hitter; step 3
        // evicts 2.
        let mut m = EvictionMap::default();
        m.record(0, &[0], 1, 0);
        m.record(1, &[0, 1], 1, 0);
        m.record(2, &[0, 2], 1, 0);
        m.record(3, &[0, 3], 1, 0);
        let life = |p: usize| m.lives[p].unwrap();
        assert_eq!(life(0), Life { inserted: 0, heavy_from: Some(1), evicted: None, sink: false });
        assert_eq!(life(1).evicted, Some(2));
        assert_eq!((life(2).inserted, life(2).evicted), (2, Some(3)));
        assert_eq!(m.counts(), (2, 1, 2));
    }

    #[test]
    fn sinks_are_not_heavy_hitters() {
        let mut m = EvictionMap::default();
        m.record(0, &[0, 1, 2], 1, 1);
        assert_eq!((m.lives[0].unwrap().sink, m.lives[0].unwrap().heavy_from), (true, None));
        assert_eq!(m.lives[1].unwrap().heavy_from, Some(0));
    }

    #[test]
    fn renders_an_svg() {
        let mut m = EvictionMap::default();
        for s in 0..20u64 {
            let resident: Vec<u64> = (0..=s).filter(|&p| p < 2 || p + 5 > s).collect();
            m.record(s, &resident, 5, 2);
        }
        let path = std::env::temp_dir().join(format!("eviction_map_{}.svg", std::process::id()));
        m.render_svg(&path, "test").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert!(svg.starts_with("<svg") && svg.contains("<rect"));
    }
}
