//! Pure functions from numbers to pictures: the heatmap colour map and image, EMA smoothing.

use eframe::egui::{Color32, ColorImage};

/// A perceptual colour map (viridis, 9 stops, linearly interpolated) for t in [0, 1].
pub fn colormap(t: f32) -> Color32 {
    const STOPS: [[u8; 3]; 9] = [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 144, 141],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    let mix = |a: u8, b: u8| (a as f32 + (b as f32 - a as f32) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    Color32::from_rgb(mix(a[0], b[0]), mix(a[1], b[1]), mix(a[2], b[2]))
}

/// One pixel per cell of a (rows × cols) window, coloured by (v − lo) / (hi − lo).
pub fn heatmap_image(values: &[f32], rows: usize, cols: usize, lo: f32, hi: f32) -> ColorImage {
    let span = (hi - lo).max(1e-6);
    let pixels = values.iter().map(|v| colormap((v - lo) / span)).collect();
    ColorImage::new([cols, rows], pixels)
}

/// Grid marks at about `n` round values across the visible range, all of one step: every mark
/// gets its tick label (egui_plot's default spacer labels only the coarsest marks, which can
/// leave an axis with a single "0").
pub fn round_marks(input: egui_plot::GridInput, n: usize) -> Vec<egui_plot::GridMark> {
    let (lo, hi) = input.bounds;
    let values = crate::core::report::raster::ticks_n(lo, hi, n);
    let step = match values.as_slice() {
        [a, b, ..] => b - a,
        _ => (hi - lo).abs().max(1e-12),
    };
    values
        .into_iter()
        .map(|value| egui_plot::GridMark {
            value,
            step_size: step,
        })
        .collect()
}

/// Exponential moving average with bias correction (as TensorBoard's smoothing):
/// s_t = w·s_{t−1} + (1−w)·x_t, reported as s_t / (1 − w^t).
pub fn debiased_ema(values: &[f64], weight: f64) -> Vec<f64> {
    let mut s = 0.0;
    let mut out = Vec::with_capacity(values.len());
    for (t, &x) in values.iter().enumerate() {
        s = weight * s + (1.0 - weight) * x;
        let debias = 1.0 - weight.powi(t as i32 + 1);
        out.push(if debias > 0.0 { s / debias } else { x });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_is_debiased() {
        let s = debiased_ema(&[2.0, 2.0, 2.0], 0.9);
        assert!(s.iter().all(|v| (v - 2.0).abs() < 1e-12), "{s:?}");
        assert_eq!(debiased_ema(&[1.0, 3.0], 0.0), vec![1.0, 3.0]);
    }

    #[test]
    fn round_marks_label_a_narrow_range() {
        let marks = round_marks(
            egui_plot::GridInput {
                bounds: (-0.07, 0.11),
                base_step_size: 1e-4,
            },
            6,
        );
        let values: Vec<f64> = marks.iter().map(|m| (m.value * 100.0).round()).collect();
        assert_eq!(values, [-5.0, 0.0, 5.0, 10.0]);
        assert!(marks.iter().all(|m| (m.step_size - 0.05).abs() < 1e-12));
    }

    #[test]
    fn colormap_ends() {
        assert_eq!(colormap(0.0), Color32::from_rgb(68, 1, 84));
        assert_eq!(colormap(1.0), Color32::from_rgb(253, 231, 37));
        assert_eq!(colormap(f32::NAN), colormap(0.0));
    }
}
