//! PNG line plots of a metrics log against the step: loss (with eval loss), learning
//! rate, throughput and gradient norm for every run, and the post-training curves
//! where the log has them (GRPO's mean reward and entropy, DPO's reward accuracy and
//! margin), those four with a 10-step moving average drawn over the noisy per-step line.
//!
//! Key decisions:
//! - **The plots are a pure function of `metrics.jsonl`**, so they can be redrawn
//!   from a live run, a finished one or a log copied off a cluster, and no plotting
//!   state lives in the trainer.
//! - **The font travels with the binary.** Text is drawn with DejaVu Sans embedded
//!   by `include_bytes!` (`assets/fonts/`, Bitstream Vera licence beside it) through
//!   plotters' pure-Rust `ab_glyph` renderer, so plots have the same legible labels
//!   on a bare CI container as on a workstation, with no fontconfig or system fonts.
//! - **Each PNG is written to a temporary sibling and renamed into place**, so a
//!   plot being viewed while it is redrawn is never half an image.
//! - Missing data is skipped, not an error: a panel whose metrics never appear is not
//!   drawn, and a record without the metric (eval loss between evals) is passed
//!   over. A value that is present but `null` (how a NaN loss is logged) or not a
//!   finite number breaks the line there, so a divergence shows as a gap.

use super::metrics::MetricsLog;
use crate::error::{Error, Result};
use plotters::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One plot: file stem, title, y-axis label and the metrics drawn on it.
struct Panel {
    stem: &'static str,
    title: &'static str,
    y_desc: &'static str,
    metrics: &'static [&'static str],
    /// Trailing moving-average window drawn over a single noisy metric (0 = none).
    smooth: usize,
}

/// The plots [`plot_metrics`] draws, in order.
const PANELS: [Panel; 8] = [
    Panel {
        stem: "loss",
        title: "Loss",
        y_desc: "loss",
        metrics: &["loss", "eval_loss"],
        smooth: 0,
    },
    Panel {
        stem: "lr",
        title: "Learning rate",
        y_desc: "learning rate",
        metrics: &["lr"],
        smooth: 0,
    },
    Panel {
        stem: "tokens_per_s",
        title: "Throughput",
        y_desc: "tokens / s",
        metrics: &["tokens_per_s"],
        smooth: 0,
    },
    Panel {
        stem: "grad_norm",
        title: "Gradient norm",
        y_desc: "grad norm",
        metrics: &["grad_norm"],
        smooth: 0,
    },
    Panel {
        stem: "reward",
        title: "Mean reward of each generation batch",
        y_desc: "reward",
        metrics: &["reward"],
        smooth: 10,
    },
    Panel {
        stem: "entropy",
        title: "Entropy of the completions",
        y_desc: "nats / token",
        metrics: &["entropy"],
        smooth: 10,
    },
    Panel {
        stem: "reward_accuracy",
        title: "Implicit-reward accuracy (chosen above rejected)",
        y_desc: "accuracy",
        metrics: &["rewards/accuracies"],
        smooth: 10,
    },
    Panel {
        stem: "reward_margin",
        title: "Implicit-reward margin (chosen minus rejected)",
        y_desc: "margin",
        metrics: &["rewards/margins"],
        smooth: 10,
    },
];

/// Series colours, by position in a panel's metric list.
const COLOURS: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];

/// Size of the plots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotOptions {
    /// Image width in pixels (default 1000).
    pub width: u32,
    /// Image height in pixels (default 600).
    pub height: u32,
}

impl Default for PlotOptions {
    fn default() -> Self {
        PlotOptions {
            width: 1000,
            height: 600,
        }
    }
}

/// Reads `metrics_jsonl` and writes `loss.png` (with `eval_loss` when present),
/// `lr.png`, `tokens_per_s.png`, `grad_norm.png` and, when logged, `reward.png`,
/// `entropy.png` (GRPO), `reward_accuracy.png`, `reward_margin.png` (DPO) into
/// `out_dir` (created if needed), skipping plots whose metrics are absent. Returns the
/// written paths.
pub fn plot_metrics(metrics_jsonl: &Path, out_dir: &Path) -> Result<Vec<PathBuf>> {
    plot_metrics_with(metrics_jsonl, out_dir, &PlotOptions::default())
}

/// [`plot_metrics`] with a chosen image size.
pub fn plot_metrics_with(
    metrics_jsonl: &Path,
    out_dir: &Path,
    options: &PlotOptions,
) -> Result<Vec<PathBuf>> {
    if options.width < 200 || options.height < 150 {
        return Err(Error::Invalid(format!(
            "plot size {}x{} is too small to draw axes (at least 200x150)",
            options.width, options.height
        )));
    }
    let records = MetricsLog::read_all(metrics_jsonl)?;
    register_font()?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let mut written = Vec::new();
    for panel in &PANELS {
        let mut series: Vec<Series> = panel
            .metrics
            .iter()
            .map(|&m| (m.to_string(), segments(&records, m)))
            .filter(|(_, segs)| !segs.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        if let ([(name, segs)], w @ 2..) = (series.as_slice(), panel.smooth) {
            let averaged = segs.iter().map(|seg| moving_average(seg, w)).collect();
            series.push((format!("{name}, mean of the last {w} steps"), averaged));
        }
        let target = out_dir.join(format!("{}.png", panel.stem));
        // The extension must stay `.png`: the encoder is chosen from it.
        let tmp = out_dir.join(format!(".{}.tmp-{}.png", panel.stem, std::process::id()));
        let drawn = draw(&tmp, panel, &series, options)
            .map_err(|e| Error::Invalid(format!("{}: drawing failed: {e}", target.display())))
            .and_then(|()| std::fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e)));
        if let Err(e) = drawn {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        written.push(target);
    }
    Ok(written)
}

/// The `(step, value)` line of `metric`, split into segments wherever a record has
/// the metric but not as a finite number. Records without a `step` or without the
/// metric are passed over.
fn segments(records: &[Value], metric: &str) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    for r in records {
        let (Some(step), Some(value)) = (r.get("step").and_then(Value::as_f64), r.get(metric))
        else {
            continue;
        };
        match value.as_f64().filter(|v| v.is_finite()) {
            Some(v) => current.push((step, v)),
            None if !current.is_empty() => out.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Trailing moving average of a segment's values over `window` points (fewer at its start).
fn moving_average(seg: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    (0..seg.len())
        .map(|i| {
            let from = (i + 1).saturating_sub(window);
            let mean = seg[from..=i].iter().map(|p| p.1).sum::<f64>() / (i + 1 - from) as f64;
            (seg[i].0, mean)
        })
        .collect()
}

/// Registers the embedded DejaVu Sans as plotters' `sans-serif`, once per process.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "the embedded font assets/fonts/DejaVuSans.ttf could not be parsed".into(),
        ))
    }
}

/// A metric's name and its line segments of `(step, value)`.
type Series = (String, Vec<Vec<(f64, f64)>>);

/// Draws one panel to `path`.
fn draw(
    path: &Path,
    panel: &Panel,
    series: &[Series],
    options: &PlotOptions,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let all = series
        .iter()
        .flat_map(|(_, segs)| segs.iter().flatten().copied());
    let (x_range, y_range) = ranges(all);
    let root = BitMapBackend::new(path, (options.width, options.height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(panel.title, ("sans-serif", 28))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(90)
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(panel.y_desc)
        .axis_desc_style(("sans-serif", 20))
        .label_style(("sans-serif", 16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format_tick(*y))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    for (i, (name, segs)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        // Sparse series (eval every N steps) get markers so single points show.
        let n_points: usize = segs.iter().map(Vec::len).sum();
        let marker = if n_points <= 50 { 3 } else { 0 };
        for (j, seg) in segs.iter().enumerate() {
            let drawn = chart.draw_series(
                LineSeries::new(seg.iter().copied(), colour.stroke_width(2)).point_size(marker),
            )?;
            if j == 0 {
                drawn.label(name.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
                });
            }
        }
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Axis ranges covering the points, with 5% headroom on y; a degenerate range
/// (one point, a constant series) is widened so the axes still have an extent.
fn ranges(
    points: impl Iterator<Item = (f64, f64)>,
) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let pad = if y1 > y0 {
        0.05 * (y1 - y0)
    } else if y0 != 0.0 {
        0.05 * y0.abs()
    } else {
        1.0
    };
    (x0..x1, (y0 - pad)..(y1 + pad))
}

/// A y tick: `3.25`, `1200`, or `1.5e-4` for very small or large magnitudes.
fn format_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e6).contains(&a) {
        let s = format!("{v:.2e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exp}");
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_trails_and_starts_short() {
        let seg = [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0), (5.0, 6.0)];
        assert_eq!(
            moving_average(&seg, 2),
            vec![(1.0, 1.0), (2.0, 1.5), (3.0, 2.5), (5.0, 4.5)]
        );
        assert_eq!(moving_average(&seg, 1), seg.to_vec());
    }

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(format_tick(3.25), "3.25");
        assert_eq!(format_tick(1200.0), "1200");
        assert_eq!(format_tick(1.5e-4), "1.5e-4");
        assert_eq!(format_tick(3e-4), "3e-4");
        assert_eq!(format_tick(0.0), "0");
    }

    #[test]
    fn non_finite_values_break_the_line_and_absent_ones_do_not() {
        let records: Vec<Value> = serde_json::from_str(
            r#"[{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.9, "eval_loss": 3.1},
                {"step": 3, "loss": null}, {"step": 4, "loss": 2.7},
                {"step": 5, "loss": 2.6, "eval_loss": 2.8}, {"note": "no step", "loss": 1.0}]"#,
        )
        .unwrap();
        assert_eq!(
            segments(&records, "loss"),
            vec![vec![(1.0, 3.0), (2.0, 2.9)], vec![(4.0, 2.7), (5.0, 2.6)]]
        );
        assert_eq!(
            segments(&records, "eval_loss"),
            vec![vec![(2.0, 3.1), (5.0, 2.8)]]
        );
        assert!(segments(&records, "grad_norm").is_empty());
    }

    #[test]
    fn degenerate_ranges_are_widened() {
        let (x, y) = ranges([(5.0, 3e-4)].into_iter());
        assert!(x.start < 5.0 && x.end > 5.0);
        assert!(y.start < 3e-4 && y.end > 3e-4);
    }
}
