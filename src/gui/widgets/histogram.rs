//! Overlaid histograms of per-triplet margins cos(q,pos) − cos(q,neg), on shared bins (Metrics
//! and Compare).

use eframe::egui::{self, Color32};
use egui_plot::{Bar, BarChart, Legend, Plot, VLine};

use crate::core::metrics::{histogram, EvalResult};

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
    Plot::new("margins")
        .legend(Legend::default())
        .height(260.0)
        .x_axis_label("margin cos(q,pos) - cos(q,neg)")
        .y_axis_label("triplets")
        .allow_scroll(false)
        .show(ui, |plot| {
            for (name, r, color) in series {
                let counts = histogram(r.per_triplet.iter().map(|s| s.margin), BINS, lo, hi);
                let bars = counts
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        Bar::new(lo + (i as f64 + 0.5) * width, c as f64).width(width * 0.95)
                    })
                    .collect();
                plot.bar_chart(BarChart::new(*name, bars).color(color.gamma_multiply(0.7)));
            }
            plot.vline(VLine::new("margin 0", 0.0).color(Color32::GRAY));
        });
}
