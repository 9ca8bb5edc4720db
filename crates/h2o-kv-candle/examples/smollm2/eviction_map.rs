//! `generate --eviction-map`: which positions one KV head of one layer holds
//! after the prompt prefill and after every decode step, from the core's
//! `h2o_kv::Trace`, drawn as an SVG (step across, position up).
//!
//! A position is resident over one run of steps (an evicted token never comes
//! back), inside the recent window first and then, if the policy keeps it for
//! its score, as a heavy hitter; the map stores at most three spans per
//! position and draws them as rectangles, so the file stays small however
//! many steps there are.

use std::path::Path;

use h2o_kv::TraceStep;
use plotters::prelude::*;

use crate::common::Result;

/// The life of one position, in recorded steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Life {
    inserted: u64,
    heavy_from: Option<u64>,
    evicted: Option<u64>,
    sink: bool,
}

/// One head's residency over a run.
#[derive(Debug, Clone, Default)]
pub struct EvictionMap {
    lives: Vec<Option<Life>>,
    steps: u64,
}

impl EvictionMap {
    /// From one head's trace (one [`TraceStep`] per recorded call, in order)
    /// under a policy with `recent` window tokens and `sinks` sinks: a
    /// resident position older than the newest `recent` positions and not a
    /// sink is a heavy hitter; a position the cache has seen and no longer
    /// holds is evicted (also when a prefill dropped it before step 0).
    pub fn from_trace(steps: &[TraceStep], recent: usize, sinks: usize) -> Self {
        let mut map = Self::default();
        for (step, s) in steps.iter().enumerate() {
            map.record(step as u64, s, recent as u64, sinks as u64);
        }
        map
    }

    fn record(&mut self, step: u64, s: &TraceStep, recent: u64, sinks: u64) {
        let seen = s.next_position as usize;
        if self.lives.len() < seen {
            self.lives.resize(seen, None);
        }
        let window_start = s.next_position.saturating_sub(recent);
        let kept = &s.kept; // ascending by position
        for (p, life) in self.lives.iter_mut().enumerate() {
            let p = p as u64;
            let resident = kept.binary_search_by_key(&p, |k| k.0).is_ok();
            let life = life.get_or_insert(Life {
                inserted: step,
                heavy_from: None,
                evicted: None,
                sink: p < sinks,
            });
            if life.evicted.is_some() {
                continue;
            }
            if !resident {
                life.evicted = Some(step);
            } else if p < window_start && !life.sink && life.heavy_from.is_none() {
                life.heavy_from = Some(step);
            }
        }
        self.steps = self.steps.max(step + 1);
    }

    /// After the last step: (resident, of which heavy hitters, evicted).
    pub fn counts(&self) -> (usize, usize, usize) {
        let lives = self.lives.iter().flatten();
        let resident = lives.clone().filter(|l| l.evicted.is_none()).count();
        let heavy = lives.clone().filter(|l| l.evicted.is_none() && l.heavy_from.is_some()).count();
        (resident, heavy, lives.filter(|l| l.evicted.is_some()).count())
    }

    /// Draws the map: recent window blue, heavy hitter orange, sink purple,
    /// evicted light grey, not yet seen white.
    pub fn render_svg(&self, path: &Path, title: &str) -> Result<()> {
        let err =
            |e: &dyn std::fmt::Display| -> Box<dyn std::error::Error> { e.to_string().into() };
        let (steps, positions) = (self.steps.max(1), self.lives.len().max(1) as u64);
        let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0u64..steps, 0u64..positions)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("step (0 = after the prompt prefill, then one per generated token)")
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
            let heavy_at = l.heavy_from.unwrap_or(end).min(end);
            if heavy_at > l.inserted {
                rects.push((
                    [(l.inserted, p), (heavy_at, p + 1)],
                    if l.sink { SINK } else { RECENT },
                ));
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

    fn step(next: u64, kept: &[u64]) -> TraceStep {
        TraceStep {
            next_position: next,
            head: 0,
            kept: kept.iter().map(|&p| (p, 0.0)).collect(),
            evicted: Vec::new(),
        }
    }

    #[test]
    fn lives_by_hand() {
        // A 5-token prefill kept 0, 3, 4 (window 2); then token 5 came and 3 went.
        let map = EvictionMap::from_trace(&[step(5, &[0, 3, 4]), step(6, &[0, 4, 5])], 2, 0);
        let l = |p: usize| map.lives[p].unwrap();
        assert_eq!(l(1).evicted, Some(0), "dropped by the prefill");
        assert_eq!((l(0).heavy_from, l(0).evicted), (Some(0), None));
        assert_eq!((l(3).heavy_from, l(3).evicted), (None, Some(1)));
        // Token 4 stays inside the 2-token window (positions 4, 5 at step 1).
        assert_eq!((l(4).heavy_from, l(5).inserted), (None, 1));
        assert_eq!(map.counts(), (3, 1, 3));
        // A sink is never a heavy hitter.
        let map = EvictionMap::from_trace(&[step(5, &[0, 3, 4])], 2, 1);
        assert_eq!((map.lives[0].unwrap().sink, map.counts()), (true, (3, 0, 2)));
    }
}
