//! Small raster plots for reports, encoded as PNG: heatmap windows (one block of pixels per
//! cell), overlaid histograms and line charts with numbered axes (digits from a built-in 5×7
//! font; titles and legends are HTML around the image). No UI crate: the CLI writes the same
//! pictures as the app.

use base64::Engine as _;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// The viridis colour map (9 stops, linearly interpolated) for t in [0, 1]; NaN is the low end.
pub fn viridis(t: f32) -> Rgb {
    const STOPS: [Rgb; 9] = [
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
    interpolate(&STOPS, t)
}

/// A diverging map for differences: blue (t = 0) through white (0.5) to red (1).
pub fn diverging(t: f32) -> Rgb {
    const STOPS: [Rgb; 5] = [
        [33, 102, 172],
        [146, 197, 222],
        [247, 247, 247],
        [244, 165, 130],
        [178, 24, 43],
    ];
    interpolate(&STOPS, t)
}

fn interpolate(stops: &[Rgb], t: f32) -> Rgb {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (stops.len() - 1) as f32;
    let i = (x.floor() as usize).min(stops.len() - 2);
    let f = x - i as f32;
    let mix = |a: u8, b: u8| (a as f32 + (b as f32 - a as f32) * f).round() as u8;
    let (a, b) = (stops[i], stops[i + 1]);
    [mix(a[0], b[0]), mix(a[1], b[1]), mix(a[2], b[2])]
}

/// 5×7 glyphs (rows top to bottom, bit 4 is the left column) of the characters tick labels use.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        'e' => [0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        _ => [0; 7],
    }
}

/// An RGB picture.
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

/// Pixels of one font unit.
const FONT_SCALE: usize = 2;
/// Width of one character of tick text, spacing included.
const CHAR_W: usize = 6 * FONT_SCALE;
/// Height of tick text.
const CHAR_H: usize = 7 * FONT_SCALE;

impl Canvas {
    /// A white canvas.
    pub fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    /// Sets one pixel (outside the canvas: nothing).
    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A filled rectangle.
    pub fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.min(y1)..y0.max(y1) {
            for x in x0.min(x1)..x0.max(x1) {
                self.set(x, y, c);
            }
        }
    }

    /// A line `width` pixels wide.
    pub fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), width: i64, c: Rgb) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            let (x, y) = (x.round() as i64, y.round() as i64);
            self.rect(
                x - width / 2,
                y - width / 2,
                x - width / 2 + width,
                y - width / 2 + width,
                c,
            );
        }
    }

    /// Tick text (digits, `.`, `-`, `+`, `e`, `%`) with its top-left corner at (x, y).
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let (px, py) = (
                            x + (k * CHAR_W + col * FONT_SCALE) as i64,
                            y + (row * FONT_SCALE) as i64,
                        );
                        self.rect(px, py, px + FONT_SCALE as i64, py + FONT_SCALE as i64, c);
                    }
                }
            }
        }
    }

    /// The PNG file of the picture.
    pub fn png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            // Writing to a Vec cannot fail.
            let mut w = enc.write_header().expect("PNG header into memory");
            w.write_image_data(&self.px).expect("PNG data into memory");
        }
        out
    }

    /// The picture as a `data:image/png;base64,...` URI for an HTML `<img>`.
    pub fn data_uri(&self) -> String {
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(self.png())
        )
    }
}

/// A heatmap of `rows × cols` values, `cell` pixels per value, coloured by `map((v − lo) / (hi −
/// lo))`; NaN cells (left out of the scale) are light grey.
pub fn heatmap(
    values: &[f32],
    rows: usize,
    cols: usize,
    cell: usize,
    (lo, hi): (f32, f32),
    map: fn(f32) -> Rgb,
) -> Canvas {
    let mut c = Canvas::new(cols * cell, rows * cell);
    let span = (hi - lo).max(1e-6);
    for r in 0..rows {
        for k in 0..cols {
            let v = values[r * cols + k];
            let color = if v.is_nan() {
                [220, 220, 220]
            } else {
                map((v - lo) / span)
            };
            let (x, y) = ((k * cell) as i64, (r * cell) as i64);
            c.rect(x, y, x + cell as i64, y + cell as i64, color);
        }
    }
    c
}

/// Around five round tick values covering [lo, hi].
pub fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    ticks_n(lo, hi, 5)
}

/// Around `n` round tick values covering [lo, hi].
pub fn ticks_n(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).abs().max(1e-12);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A tick label: few digits, scientific notation for very small or large values.
pub fn tick_label(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() < 1e-3 || v.abs() >= 1e5 {
        return format!("{v:.1e}");
    }
    // Enough decimals to write the step exactly (0.25 needs two, 2.5 one).
    let decimals = (0..6)
        .find(|&d| {
            let x = step.abs() * 10f64.powi(d);
            (x - x.round()).abs() < 1e-6 * x.max(1.0)
        })
        .unwrap_or(6) as usize;
    format!("{v:.decimals$}")
}

/// Plot area inside a canvas, with data ranges, and the axes drawn with numbered ticks.
pub struct Frame {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    /// The x data range.
    pub xr: (f64, f64),
    /// The y data range.
    pub yr: (f64, f64),
}

impl Frame {
    /// Draws axes and ticks on `c` for the given data ranges; returns the frame to plot in.
    pub fn draw(c: &mut Canvas, xr: (f64, f64), yr: (f64, f64)) -> Self {
        let yt = ticks(yr.0, yr.1);
        let ystep = yt.windows(2).next().map_or(1.0, |w| w[1] - w[0]);
        let ylabels: Vec<String> = yt.iter().map(|&v| tick_label(v, ystep)).collect();
        let left = 8 + CHAR_W * ylabels.iter().map(String::len).max().unwrap_or(1) + 6;
        let f = Frame {
            x0: left as f64,
            y0: 8.0,
            w: (c.w - left - 12) as f64,
            h: (c.h - 16 - CHAR_H - 8) as f64,
            xr: if xr.1 > xr.0 {
                xr
            } else {
                (xr.0 - 0.5, xr.0 + 0.5)
            },
            yr: if yr.1 > yr.0 {
                yr
            } else {
                (yr.0 - 0.5, yr.0 + 0.5)
            },
        };
        let (grid, ink) = ([230, 230, 230], [60, 60, 60]);
        for (v, label) in yt.iter().zip(&ylabels) {
            let y = f.py(*v);
            c.line((f.x0, y), (f.x0 + f.w, y), 1, grid);
            let tx = f.x0 as i64 - 6 - (CHAR_W * label.len()) as i64;
            c.text(tx, y as i64 - CHAR_H as i64 / 2, label, ink);
        }
        let xt = ticks(f.xr.0, f.xr.1);
        let xstep = xt.windows(2).next().map_or(1.0, |w| w[1] - w[0]);
        for v in xt {
            let x = f.px(v);
            c.line((x, f.y0 + f.h), (x, f.y0 + f.h + 4.0), 1, ink);
            let label = tick_label(v, xstep);
            let tx = x as i64 - (CHAR_W * label.len()) as i64 / 2;
            c.text(tx, (f.y0 + f.h + 8.0) as i64, &label, ink);
        }
        c.line((f.x0, f.y0), (f.x0, f.y0 + f.h), 1, ink);
        c.line((f.x0, f.y0 + f.h), (f.x0 + f.w, f.y0 + f.h), 1, ink);
        f
    }

    /// Pixel column of a data x.
    pub fn px(&self, x: f64) -> f64 {
        self.x0 + (x - self.xr.0) / (self.xr.1 - self.xr.0) * self.w
    }

    /// Pixel row of a data y.
    pub fn py(&self, y: f64) -> f64 {
        self.y0 + self.h - (y - self.yr.0) / (self.yr.1 - self.yr.0) * self.h
    }
}

/// Overlaid histograms of several series on shared bins, each with its colour (drawn half
/// transparent over white, so overlaps stay visible).
pub fn histograms(series: &[(&[f64], Rgb)], bins: usize, w: usize, h: usize) -> Canvas {
    let all = series.iter().flat_map(|(v, _)| v.iter().copied());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo, hi.max(lo + 1e-9))
    } else {
        (0.0, 1.0)
    };
    let width = (hi - lo) / bins as f64;
    let counts: Vec<Vec<usize>> = series
        .iter()
        .map(|(v, _)| {
            let mut c = vec![0usize; bins];
            for &x in v.iter() {
                c[(((x - lo) / width) as usize).min(bins - 1)] += 1;
            }
            c
        })
        .collect();
    let top = counts.iter().flatten().copied().max().unwrap_or(1) as f64;
    let mut c = Canvas::new(w, h);
    let f = Frame::draw(&mut c, (lo, hi), (0.0, top * 1.05));
    for (cnt, (_, color)) in counts.iter().zip(series) {
        let soft = color.map(|v| ((v as u16 + 255) / 2) as u8);
        for (b, &n) in cnt.iter().enumerate() {
            let (x0, x1) = (
                f.px(lo + b as f64 * width),
                f.px(lo + (b + 1) as f64 * width),
            );
            c.rect(
                x0 as i64 + 1,
                f.py(n as f64) as i64,
                x1 as i64,
                f.py(0.0) as i64,
                soft,
            );
        }
    }
    for (cnt, (_, color)) in counts.iter().zip(series) {
        // The outline of each series on top, so both stay readable where they overlap.
        let mut prev = (f.px(lo), f.py(0.0));
        for (b, &n) in cnt.iter().enumerate() {
            let y = f.py(n as f64);
            let (x0, x1) = (
                f.px(lo + b as f64 * width),
                f.px(lo + (b + 1) as f64 * width),
            );
            c.line(prev, (x0, y), 2, *color);
            c.line((x0, y), (x1, y), 2, *color);
            prev = (x1, y);
        }
        c.line(prev, (f.px(hi), f.py(0.0)), 2, *color);
    }
    c
}

/// One series of a line chart: its (x, y) points, its colour, and whether each point is marked.
pub type Series<'a> = (&'a [(f64, f64)], Rgb, bool);

/// Line charts of several series of (x, y) points on shared axes; marks are drawn at each point
/// of series with `marks` set.
pub fn lines(series: &[Series], w: usize, h: usize) -> Canvas {
    let pts = series.iter().flat_map(|(p, _, _)| p.iter());
    let (mut xr, mut yr) = (
        (f64::INFINITY, f64::NEG_INFINITY),
        (f64::INFINITY, f64::NEG_INFINITY),
    );
    for &(x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        xr = (xr.0.min(x), xr.1.max(x));
        yr = (yr.0.min(y), yr.1.max(y));
    }
    if !xr.0.is_finite() {
        (xr, yr) = ((0.0, 1.0), (0.0, 1.0));
    }
    let pad = (yr.1 - yr.0).max(1e-9) * 0.05;
    let mut c = Canvas::new(w, h);
    let f = Frame::draw(&mut c, xr, (yr.0 - pad, yr.1 + pad));
    for (p, color, marks) in series {
        for pair in p.windows(2) {
            c.line(
                (f.px(pair[0].0), f.py(pair[0].1)),
                (f.px(pair[1].0), f.py(pair[1].1)),
                2,
                *color,
            );
        }
        if *marks {
            for &(x, y) in p.iter() {
                let (x, y) = (f.px(x) as i64, f.py(y) as i64);
                c.rect(x - 3, y - 3, x + 4, y + 4, *color);
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = ticks(-0.37, 0.81);
        assert!(t.first().unwrap() >= &-0.37 && t.last().unwrap() <= &0.81 && t.len() >= 4);
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(
            (tick_label(0.75, 0.25), tick_label(7.5, 2.5)),
            ("0.75".into(), "7.5".into())
        );
        assert_eq!(tick_label(2e-5, 1e-5), "2.0e-5");
    }

    #[test]
    fn pictures_encode_as_png() {
        let h = heatmap(&[0.0, 0.5, f32::NAN, 1.0], 2, 2, 4, (0.0, 1.0), viridis);
        let png = h.png();
        assert_eq!(&png[1..4], b"PNG");
        assert_eq!(h.px[..3], viridis(0.0));
        assert!(h.data_uri().starts_with("data:image/png;base64,iVBOR"));
        let c = histograms(&[(&[0.1, 0.2, 0.2, 0.9], [200, 50, 50])], 10, 300, 200);
        assert!(
            c.px.chunks(3).any(|p| p == [200, 50, 50]),
            "the outline is drawn"
        );
    }
}
