//! Overlaid histograms of per-triplet margins cos(q,pos) − cos(q,neg), on shared bins (Metrics
//! and Compare): ticks on both axes, the legend above the bars (head room is left for it), and
//! each bar's count and bin on hover.

use eframe::egui::{self, Color32};
use egui_plot::{Bar, BarChart, Corner, Legend, Plot, VLine};

use crate::core::metrics::{histogram, EvalResult};
use crate::core::report::raster::tick_label;
use crate::gui::plots::round_marks;

/// Bins of the margin histogram.
const BINS: usize = 40;

/// Overlaid histograms of margins, one per (name, result, colour), on shared bins.
pub(crate) fn margin_histogram(ui: &mut egui::Ui, series: &[(&str, &EvalResult, Color32)]) {
    let all = series
        .iter()
        .flat_map(|(_, r, _)| r.per_triplet.iter().map(|s| s.margin));
    let (lo, hi) = all.fold((0.0f64, 0.0f64), |(lo, hi), m| (lo.min(m), hi.max(m)));
    let (lo, hi) = ((lo * 10.0).floor() / 10.0, (hi * 10.0).ceil() / 10.0);
    let width = (hi - lo).max(1e-6) / BINS as f64;
    let counts: Vec<Vec<usize>> = series
        .iter()
        .map(|(_, r, _)| histogram(r.per_triplet.iter().map(|s| s.margin), BINS, lo, hi))
        .collect();
    let tallest = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    Plot::new("margins")
        .legend(Legend::default().position(Corner::LeftTop))
        .height(260.0)
        .x_axis_label("margin cos(q,pos) - cos(q,neg)")
        .y_axis_label("triplets")
        .y_axis_min_width(40.0)
        .x_grid_spacer(|g| round_marks(g, 6))
        // Counts: whole numbers only.
        .y_grid_spacer(|g| {
            let mut marks = round_marks(g, 5);
            marks.retain(|m| m.value.fract() == 0.0);
            marks
        })
        .x_axis_formatter(|m, _| tick_label(m.value, m.step_size))
        .y_axis_formatter(|m, _| format!("{:.0}", m.value))
        .include_x(lo)
        .include_x(hi)
        .include_y(0.0)
        // Head room for the legend, which sits at the top left.
        .include_y(tallest * 1.35)
        .allow_scroll(false)
        .show(ui, |plot| {
            for ((name, _, color), counts) in series.iter().zip(&counts) {
                let bars = counts
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        let from = lo + i as f64 * width;
                        Bar::new(from + 0.5 * width, c as f64)
                            .width(width * 0.95)
                            .name(format!("[{from:.3}, {:.3})", from + width))
                    })
                    .collect();
                let series_name = name.to_string();
                plot.bar_chart(
                    BarChart::new(*name, bars)
                        .color(color.gamma_multiply(0.7))
                        .element_formatter(Box::new(move |bar, _| {
                            format!(
                                "{series_name}: {} triplets with margin in {}",
                                bar.value, bar.name
                            )
                        })),
                );
            }
            plot.vline(VLine::new("margin 0", 0.0).color(Color32::GRAY));
        });
}
