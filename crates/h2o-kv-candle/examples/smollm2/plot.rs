//! SVG plots: perplexity against budget, and the passkey heat map.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use h2o_kv::{LayerSchedule, PolicyKind};

use crate::common::{Method, Result, Spec};
use crate::passkey::Cell;
use crate::ppl::Row;

fn err(e: impl std::fmt::Display) -> Box<dyn std::error::Error> {
    e.to_string().into()
}

/// Ten distinguishable line colours (the "tab10" palette).
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
];

/// One line per (policy, heavy fraction): perplexity / full against budget;
/// one panel per text.
pub fn ppl(rows: &[Row], path: &Path, window: usize) -> Result<()> {
    let mut texts: Vec<&str> = Vec::new();
    for r in rows {
        if !texts.contains(&r.text.as_str()) {
            texts.push(&r.text);
        }
    }
    let width = 520 * texts.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            &format!("SmolLM2-135M, {window}-token windows: perplexity relative to the full cache"),
            ("sans-serif", 18),
        )
        .map_err(err)?;
    let panels = root.split_evenly((1, texts.len().max(1)));
    for (text, area) in texts.iter().zip(panels.iter()) {
        let rows: Vec<&Row> = rows.iter().filter(|r| r.text == *text).collect();
        ppl_panel(area, &rows, text, window)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn ppl_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    rows: &[&Row],
    text: &str,
    window: usize,
) -> Result<()> {
    let full =
        rows.iter().find(|r| r.spec.method == Method::FULL).ok_or("no full-cache row")?.ppl();
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows.iter().filter(|r| r.spec.method != Method::FULL) {
        let mut label = match r.spec.method {
            Method::Policy(PolicyKind::H2O) => format!("h2o, heavy {}", r.spec.heavy_fraction),
            m => m.name().to_string(),
        };
        if r.spec.schedule != LayerSchedule::Uniform {
            label = format!("{label}, {}", r.spec.schedule.name());
        }
        let y = r.ppl() / full;
        match lines.iter_mut().find(|l| l.0 == label) {
            Some(l) => l.1.push((r.spec.percent, y)),
            None => lines.push((label, vec![(r.spec.percent, y)])),
        }
    }
    for l in &mut lines {
        l.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let ys = lines.iter().flat_map(|l| l.1.iter().map(|p| p.1)).chain([1.0]);
    let hi = ys.fold(1.0f64, f64::max);
    // A log scale would hide the interesting region near 1; cap the axis instead.
    let top = hi.min(4.0) * 1.05;
    let x_max = lines.iter().flat_map(|l| l.1.iter().map(|p| p.0)).fold(0.0, f64::max) + 5.0;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{text} (full cache: perplexity {full:.2})"), ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_max, 0.95f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("KV budget (% of the {window}-token window)"))
        .y_desc("perplexity / full cache (lower is better)")
        .y_label_formatter(&|y| format!("{y:.2}"))
        .x_label_formatter(&|x| format!("{x:.0}%"))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new([(0.0, 1.0), (x_max, 1.0)], BLACK.stroke_width(1)))
        .map_err(err)?
        .label("full cache")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    for (i, (label, pts)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let clipped: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (x, y.min(top))).collect();
        chart
            .draw_series(LineSeries::new(clipped.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(clipped.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Heat map: one row per policy, one column per (length, depth); the cell's
/// colour is the accuracy (red 0 → green 1) and its text `correct/total`.
pub fn passkey(cells: &[Cell], specs: &[Spec], path: &Path) -> Result<()> {
    let mut cols: Vec<(usize, f64)> = Vec::new();
    for c in cells {
        if !cols.iter().any(|&(l, d)| l == c.length && d.to_bits() == c.depth.to_bits()) {
            cols.push((c.length, c.depth));
        }
    }
    cols.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let (cw, ch, left, top) = (90i32, 30i32, 200i32, 70i32);
    let w = (left + cw * cols.len() as i32 + 20) as u32;
    let h = (top + ch * specs.len() as i32 + 40) as u32;
    let root = SVGBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let font = ("sans-serif", 13).into_font();
    root.draw(&Text::new(
        "Passkey retrieval, SmolLM2-135M: keys found (prefill of the whole prompt, then greedy)",
        (10, 10),
        ("sans-serif", 15).into_font(),
    ))
    .map_err(err)?;
    for (j, &(l, d)) in cols.iter().enumerate() {
        let x = left + cw * j as i32;
        let label = if d.is_nan() { "yours".to_string() } else { format!("{l} @{d}%") };
        root.draw(&Text::new(label, (x + 4, top - 20), font.clone())).map_err(err)?;
    }
    for (i, s) in specs.iter().enumerate() {
        let y = top + ch * i as i32;
        root.draw(&Text::new(s.label(), (8, y + 8), font.clone())).map_err(err)?;
        for (j, &(l, d)) in cols.iter().enumerate() {
            let x = left + cw * j as i32;
            let Some(c) = cells
                .iter()
                .find(|c| c.spec == *s && c.length == l && c.depth.to_bits() == d.to_bits())
            else {
                continue;
            };
            let acc = c.correct as f64 / c.total.max(1) as f64;
            let color = RGBColor((220.0 * (1.0 - acc)) as u8 + 30, (180.0 * acc) as u8 + 50, 60);
            root.draw(&Rectangle::new([(x, y), (x + cw - 2, y + ch - 2)], color.filled()))
                .map_err(err)?;
            root.draw(&Text::new(
                format!("{}/{}", c.correct, c.total),
                (x + 28, y + 8),
                ("sans-serif", 13).into_font().color(&WHITE),
            ))
            .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}
