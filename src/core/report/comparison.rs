//! Exports of a comparison of two models: a self-contained HTML report (settings, metric tables
//! with intervals, heatmap windows and their difference, margin histograms, the training curves
//! of the run, the flip table; pictures embedded as PNG), Markdown for a pull request, and one
//! CSV row per measured triplet.

use std::fmt::Write as _;
use std::path::Path;

use super::raster::{diverging, heatmap, histograms, lines, viridis, Rgb};
use crate::core::data::Dataset;
use crate::core::metrics::{
    dot_f32, flip_counts, lower_is_better, metric_keys, metric_label, Flip,
};
use crate::core::pipeline::{Comparison, Evaluation, RunRecord};

/// Colours of model A and model B in every picture.
pub const COLOR_A: Rgb = [60, 120, 210];
/// Model B's colour.
pub const COLOR_B: Rgb = [230, 120, 30];

/// `0.8123 [0.7712, 0.8501]`.
fn with_ci(v: f64, ci: [f64; 2]) -> String {
    format!("{v:.4} [{:.4}, {:.4}]", ci[0], ci[1])
}

/// What the difference says, in a word: better, worse (interval excluding 0) or uncertain.
fn verdict(key: &str, d: &crate::core::metrics::uncertainty::Delta) -> &'static str {
    if d.is_uncertain() {
        "no clear difference"
    } else if (d.delta > 0.0) != lower_is_better(key) {
        "B better"
    } else {
        "B worse"
    }
}

/// Markdown for a pull request: what was measured, the metric table, the flips.
pub fn markdown(data: &Dataset, c: &Comparison, record: Option<&RunRecord>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## tripletlab comparison\n");
    let _ = writeln!(
        s,
        "- data: `{}` (sha256 `{}`)",
        data.path.display(),
        short(&data.sha256)
    );
    let _ = writeln!(
        s,
        "- measured on: **{}** — {} ({} triplets, {} queries, {} documents)",
        c.rows.subset.name(),
        c.rows.note,
        c.a.n_triplets,
        c.a.n_queries,
        c.a.n_corpus
    );
    let _ = writeln!(s, "- A: `{}`\n- B: `{}`", c.models[0], c.models[1]);
    if let Some(r) = record {
        let _ = writeln!(
            s,
            "- run: base `{}`, {} steps, saved step {} ({})",
            r.base_model.source,
            r.steps.len(),
            r.best_step,
            r.best_metric
        );
    }
    let _ = writeln!(
        s,
        "- 95 % intervals: bootstrap over queries, {} resamples (paired for B − A); p: paired sign-flip permutation\n",
        c.resamples
    );
    let _ = writeln!(
        s,
        "| metric | A | B | B − A | p | |\n| --- | ---: | ---: | ---: | ---: | --- |"
    );
    for key in metric_keys() {
        let (a, b, d) = (&c.a_intervals[&key], &c.b_intervals[&key], &c.deltas[&key]);
        let _ = writeln!(
            s,
            "| `{key}` | {} | {} | {:+.4} [{:+.4}, {:+.4}] | {:.4} | {} |",
            with_ci(a.value, a.ci95),
            with_ci(b.value, b.ci95),
            d.delta,
            d.ci95[0],
            d.ci95[1],
            d.p_value,
            verdict(&key, d)
        );
    }
    let counts = flip_counts(&c.a.per_triplet, &c.b.per_triplet);
    let _ = writeln!(
        s,
        "\n| triplets (cos(q,pos) > cos(q,neg)) | count |\n| --- | ---: |"
    );
    for (f, n) in Flip::ALL.iter().zip(counts) {
        let _ = writeln!(s, "| {} | {n} |", f.label());
    }
    s
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// A CSV field, quoted when it needs to be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One row per measured triplet: its file row, split, texts, both models' scores and ranks
/// (within the measured triplets' corpus), and how it flipped.
pub fn per_triplet_csv(data: &Dataset, c: &Comparison) -> String {
    let mut s = String::from(
        "file_row,split,query,pos,negative,a_cos_pos,a_cos_neg,a_margin,a_rank_pos,a_rank_neg,\
         b_cos_pos,b_cos_neg,b_margin,b_rank_pos,b_rank_neg,flip\n",
    );
    let split = |_: usize| match c.rows.subset {
        crate::core::pipeline::Subset::HeldOut => "held-out",
        crate::core::pipeline::Subset::Training => "training",
        crate::core::pipeline::Subset::All => "all",
    };
    for (k, &t) in c.rows.triplets.iter().enumerate() {
        let tr = &data.triplets[t];
        let (a, b) = (&c.a.per_triplet[k], &c.b.per_triplet[k]);
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.6},{:.6},{:.6},{},{},{:.6},{:.6},{:.6},{},{},{}",
            data.source_rows[t],
            split(t),
            csv_field(&tr.query),
            csv_field(&tr.pos),
            csv_field(&tr.negative),
            a.cos_pos,
            a.cos_neg,
            a.margin,
            a.rank_pos,
            a.rank_neg,
            b.cos_pos,
            b.cos_neg,
            b.margin,
            b.rank_pos,
            b.rank_neg,
            Flip::of(a, b).label()
        );
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn css(c: Rgb) -> String {
    format!("rgb({},{},{})", c[0], c[1], c[2])
}

/// The cosines of the first 25 measured triplets' documents (pos, neg, pos, neg, ...), 50 × 50.
fn doc_window(eval: &Evaluation, triplets: &[usize]) -> (Vec<f32>, usize) {
    let docs: Vec<usize> = triplets
        .iter()
        .take(25)
        .flat_map(|&t| [2 * t, 2 * t + 1])
        .collect();
    let n = docs.len();
    let mut v = Vec::with_capacity(n * n);
    for &i in &docs {
        for &j in &docs {
            v.push(dot_f32(eval.doc_rows.row(i), eval.doc_rows.row(j)));
        }
    }
    (v, n)
}

/// Writes the self-contained HTML report.
pub fn write_html(
    path: &Path,
    data: &Dataset,
    c: &Comparison,
    evals: [&Evaluation; 2],
    record: Option<&RunRecord>,
) -> std::io::Result<()> {
    std::fs::write(path, html(data, c, evals, record))
}

/// The HTML report as text.
pub fn html(
    data: &Dataset,
    c: &Comparison,
    evals: [&Evaluation; 2],
    record: Option<&RunRecord>,
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>tripletlab comparison</title>\
         <style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}.grey{{color:#999}}.good{{color:#1a8a3a}}.bad{{color:#c0392b}}\
         .key{{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}}figure{{display:inline-block;margin:0 1em 1em 0}}\
         figcaption{{font-size:90%;color:#444}}</style></head><body>"
    );
    let _ = write!(h, "<h1>Comparison of two embedding models</h1>");
    let _ = write!(
        h,
        "<p>tripletlab {}. Data: <code>{}</code> (sha256 <code>{}</code>, {} triplets). \
         Measured on <b>{}</b>: {} — {} triplets, {} distinct queries, {} distinct documents.</p>",
        env!("CARGO_PKG_VERSION"),
        esc(&data.path.display().to_string()),
        short(&data.sha256),
        data.len(),
        c.rows.subset.name(),
        esc(&c.rows.note),
        c.a.n_triplets,
        c.a.n_queries,
        c.a.n_corpus
    );
    let _ = write!(h, "<table><tr><th></th><th>model</th><th>max tokens</th><th>compute</th><th>query prompt</th><th>document prompt</th></tr>");
    for (name, e, color) in [("A", evals[0], COLOR_A), ("B", evals[1], COLOR_B)] {
        let _ = write!(
            h,
            "<tr><td><span class=\"key\" style=\"background:{}\"></span>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{:?}</td></tr>",
            css(color),
            esc(&e.model_label),
            e.max_seq_len,
            e.compute.name(),
            esc(&e.prompts.query),
            esc(&e.prompts.document)
        );
    }
    h.push_str("</table>");
    // Metrics.
    let _ = write!(
        h,
        "<h2>Metrics</h2><p>Value [95 % interval]: bootstrap over queries ({} resamples, seed {}), \
         paired for B − A; p: paired sign-flip permutation over queries. A difference whose \
         interval contains 0 is grey.</p><table><tr><th>metric</th><th>meaning</th><th>A</th><th>B</th><th>B − A</th><th>p</th></tr>",
        c.resamples, c.seed
    );
    for key in metric_keys() {
        let (a, b, d) = (&c.a_intervals[&key], &c.b_intervals[&key], &c.deltas[&key]);
        let class = match verdict(&key, d) {
            "B better" => "good",
            "B worse" => "bad",
            _ => "grey",
        };
        let _ = write!(
            h,
            "<tr><td><code>{key}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{:+.4} [{:+.4}, {:+.4}]</td><td class=\"{class}\">{:.4}</td></tr>",
            esc(&metric_label(&key)),
            with_ci(a.value, a.ci95),
            with_ci(b.value, b.ci95),
            d.delta,
            d.ci95[0],
            d.ci95[1],
            d.p_value
        );
    }
    h.push_str("</table>");
    // Flips.
    let counts = flip_counts(&c.a.per_triplet, &c.b.per_triplet);
    h.push_str("<h2>Triplets that changed</h2><table><tr><th>cos(q,pos) &gt; cos(q,neg)</th><th>triplets</th></tr>");
    for (f, n) in Flip::ALL.iter().zip(counts) {
        let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", f.label());
    }
    h.push_str("</table>");
    // Margins.
    let margins = |r: &crate::core::metrics::EvalResult| {
        r.per_triplet.iter().map(|s| s.margin).collect::<Vec<_>>()
    };
    let (ma, mb) = (margins(&c.a), margins(&c.b));
    let img = histograms(&[(&ma, COLOR_A), (&mb, COLOR_B)], 40, 760, 300);
    let _ = write!(
        h,
        "<h2>Margins</h2><figure><img src=\"{}\" alt=\"margin histograms\"><figcaption>Triplets by margin \
         cos(q,pos) − cos(q,neg) (x) and count (y):<span class=\"key\" style=\"background:{}\"></span>A\
         <span class=\"key\" style=\"background:{}\"></span>B. Right of 0: ranked right.</figcaption></figure>",
        img.data_uri(),
        css(COLOR_A),
        css(COLOR_B)
    );
    // Heatmaps: A and B on one scale (self-similarity left out), and their difference.
    let (wa, n) = doc_window(evals[0], &c.rows.triplets);
    let (wb, _) = doc_window(evals[1], &c.rows.triplets);
    let off_diag = |w: &[f32]| -> Vec<f32> {
        w.iter()
            .enumerate()
            .map(|(k, &v)| if k / n == k % n { f32::NAN } else { v })
            .collect()
    };
    let (oa, ob) = (off_diag(&wa), off_diag(&wb));
    let finite = oa.iter().chain(&ob).copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, u), v| {
        (l.min(v), u.max(v))
    });
    let diff: Vec<f32> = oa.iter().zip(&ob).map(|(a, b)| b - a).collect();
    let m = diff
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(1e-6f32, |m, v| m.max(v.abs()));
    let cell = 8;
    let _ = write!(
        h,
        "<h2>Similarity of the first {} measured triplets' documents</h2><p>Rows and columns: pos₀, neg₀, pos₁, neg₁, … of the measured triplets in file order \
         ({} × {} window; the diagonal, each document with itself, is grey and left out of the scale).</p>",
        n / 2,
        n,
        n
    );
    for (name, w, scale, map, caption) in [
        (
            "A",
            &oa,
            (lo, hi),
            viridis as fn(f32) -> Rgb,
            format!("A: cosine from {lo:.3} (dark) to {hi:.3} (yellow)"),
        ),
        ("B", &ob, (lo, hi), viridis, "B: the same scale".to_string()),
        (
            "B − A",
            &diff,
            (-m, m),
            diverging,
            format!(
                "B − A: from {:.3} (blue) through 0 (white) to {m:.3} (red)",
                -m
            ),
        ),
    ] {
        let img = heatmap(w, n, n, cell, scale, map);
        let _ = write!(
            h,
            "<figure><img src=\"{}\" alt=\"{name} heatmap\"><figcaption>{}</figcaption></figure>",
            img.data_uri(),
            esc(&caption)
        );
    }
    // The run's curves.
    if let Some(r) = record {
        let loss: Vec<(f64, f64)> = r.steps.iter().map(|s| (s.step as f64, s.loss)).collect();
        let lr: Vec<(f64, f64)> = r.steps.iter().map(|s| (s.step as f64, s.lr)).collect();
        let val: Vec<(f64, f64)> = r
            .evals
            .iter()
            .filter_map(|e| e.metrics.get(&r.best_metric).map(|v| (e.step as f64, *v)))
            .collect();
        let _ = write!(
            h,
            "<h2>Training run of the fine-tuned model</h2><p>Base <code>{}</code>, {} training and {} validation triplets, {} of {} steps ({:?}), {:.0} s. \
             Saved checkpoint: step {} (best validation <code>{}</code>{}).</p>",
            esc(&r.base_model.source),
            r.train_triplets,
            r.val_triplets,
            r.steps.len(),
            r.total_steps,
            r.stop,
            r.wall_secs,
            r.best_step,
            r.best_metric,
            if r.best_step == 0 { "; no step improved on the base model" } else { "" }
        );
        let best: Vec<(f64, f64)> = val
            .iter()
            .copied()
            .filter(|(s, _)| *s as usize == r.best_step)
            .collect();
        for (img, caption) in [
            (
                lines(&[(&loss, COLOR_A, false)], 760, 220),
                "training loss (y) by step (x)".to_string(),
            ),
            (
                lines(&[(&lr, [120, 120, 120], false)], 760, 160),
                "learning rate (y) by step (x)".to_string(),
            ),
            (
                lines(
                    &[(&val, COLOR_B, true), (&best, [200, 30, 30], true)],
                    760,
                    220,
                ),
                format!(
                    "validation {} (y) by step (x); the saved step in red",
                    r.best_metric
                ),
            ),
        ] {
            let _ = write!(
                h,
                "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
                img.data_uri(),
                esc(&caption),
                esc(&caption)
            );
        }
    }
    let _ = writeln!(
        h,
        "<p class=\"grey\">A: {}<br>B: {}</p></body></html>",
        esc(&c.models[0]),
        esc(&c.models[1])
    );
    h
}
