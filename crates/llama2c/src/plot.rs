//! SVG plot of perplexity against cache budget, one line per policy.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use llama2c::eval::Row;
use llama2c::policy::PolicyKind;

/// Plot errors are reported as text: plotters' error type is generic over the backend.
pub type PlotError = String;

/// The three bounded policies drawn as lines: label, kind, colour.
const LINES: [(&str, PolicyKind, RGBColor); 3] = [
    ("recent (sliding window)", PolicyKind::Recent, RGBColor(31, 119, 180)),
    ("heavy only", PolicyKind::Heavy, RGBColor(214, 39, 40)),
    ("h2o (half heavy, half recent)", PolicyKind::H2o, RGBColor(44, 160, 44)),
];

/// (budget %, perplexity) of `kind`, by budget; H2O only at heavy fraction 0.5.
fn series(rows: &[Row], kind: PolicyKind) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| {
            r.spec.kind == kind && (kind != PolicyKind::H2o || r.spec.heavy_fraction == 0.5)
        })
        .map(|r| (f64::from(r.spec.percent), r.perplexity))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts.dedup_by(|a, b| a.0 == b.0);
    pts
}

/// Draws perplexity against budget (% of `seq_len`) in two panels: every
/// bounded policy (left) and recent against H2O only, zoomed (right); the full
/// cache is a flat black line. Writes the SVG to `path`.
///
/// # Errors
/// A message if drawing or writing the file fails, or `rows` has no full-cache row.
pub fn plot(rows: &[Row], path: &Path, title: &str) -> Result<(), PlotError> {
    let full = rows.iter().find(|r| r.spec.kind == PolicyKind::Full).ok_or("no full-cache row")?;
    let root = SVGBackend::new(path, (1000, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(500);
    panel(&left, rows, full, &LINES, "all policies")?;
    panel(&right, rows, full, &[LINES[0], LINES[2]], "zoom: recent vs h2o")?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// One panel with `lines` and the full-cache reference.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    rows: &[Row],
    full: &Row,
    lines: &[(&str, PolicyKind, RGBColor)],
    caption: &str,
) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let data: Vec<Vec<(f64, f64)>> = lines.iter().map(|l| series(rows, l.1)).collect();
    let ys = data.iter().flatten().map(|p| p.1).chain([full.perplexity]);
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    let pad = (hi - lo).max(0.01) * 0.08;
    let x_max = data.iter().flatten().map(|p| p.0).fold(0.0, f64::max) + 5.0;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_max, (lo - pad)..(hi + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("KV budget (% of the 512-token context)")
        .y_desc("perplexity (lower is better)")
        .y_label_formatter(&|y| format!("{y:.2}"))
        .x_label_formatter(&|x| format!("{x:.0}%"))
        .draw()
        .map_err(|e| err(&e))?;
    let flat = [(0.0, full.perplexity), (x_max, full.perplexity)];
    chart
        .draw_series(LineSeries::new(flat, BLACK.stroke_width(1)))
        .map_err(|e| err(&e))?
        .label(format!("full cache ({:.3})", full.perplexity))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    for (&(label, _, color), pts) in lines.iter().zip(&data) {
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}
