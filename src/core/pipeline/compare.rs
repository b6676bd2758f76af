//! Comparing two models on the right triplets: when a model's run record matches the open file,
//! its held-out rows (never trained on) by default, or its training rows, or all; metrics on a
//! subset are exactly those of a file holding only those rows, each with a 95 % bootstrap
//! interval, and every difference with a paired interval and p-value.

use std::collections::{BTreeMap, HashMap};

use crate::core::data::Dataset;
use crate::core::embeddings::Embeddings;
use crate::core::metrics::uncertainty::{intervals, paired, Delta, Interval};
use crate::core::metrics::{evaluate, EvalResult, RetrievalIndex};

use super::record::{RunRecord, Split};
use super::Evaluation;

/// Which triplets a comparison measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subset {
    /// The rows a fine-tuned model never trained on.
    #[default]
    HeldOut,
    /// The rows it trained on.
    Training,
    /// Every row of the file.
    All,
}

impl Subset {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Subset::HeldOut => "held-out",
            Subset::Training => "training",
            Subset::All => "all",
        }
    }

    /// Parses `held-out`, `training` or `all`.
    pub fn parse(s: &str) -> Result<Self, String> {
        [Subset::HeldOut, Subset::Training, Subset::All]
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("subset must be held-out, training or all, got `{s}`"))
    }
}

/// The triplets of a subset and how they relate to the run that trained the model.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsetRows {
    /// Which subset.
    pub subset: Subset,
    /// Triplet indices (into the dataset), in file order.
    pub triplets: Vec<usize>,
    /// The model was trained on this many triplets of the file (`None`: no matching run record).
    pub trained_on: Option<usize>,
    /// A line saying what is measured ("trained on 400, measured on 100 held-out triplets").
    pub note: String,
}

/// The triplets of `subset` of `data`, from the run record of the compared model (which must
/// match the file for `held-out` and `training`).
pub fn subset_rows(
    data: &Dataset,
    record: Option<&RunRecord>,
    subset: Subset,
) -> Result<SubsetRows, String> {
    let matching = record.filter(|r| r.matches(data));
    let all = || (0..data.len()).collect::<Vec<_>>();
    // A row gives several triplets when it is an n-tuple.
    let mut by_row: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, &row) in data.source_rows.iter().enumerate() {
        by_row.entry(row).or_default().push(i);
    }
    let pick = |rows: &[usize]| -> Result<Vec<usize>, String> {
        let mut t: Vec<usize> = Vec::new();
        for r in rows {
            let ts = by_row.get(r).ok_or_else(|| {
                format!("the run record names row {r}, which is not a valid row of this file")
            })?;
            t.extend(ts);
        }
        t.sort_unstable();
        Ok(t)
    };
    let trained_on = match matching {
        Some(r) => Some(pick(r.split.train_rows())?.len()),
        None => None,
    };
    let (triplets, note) = match (subset, matching) {
        (Subset::All, Some(r)) => (
            all(),
            format!(
                "all {} triplets of the file, {} of which the model was trained on",
                data.len(),
                trained_on.unwrap_or(r.split.train_rows().len())
            ),
        ),
        (Subset::All, None) => (
            all(),
            format!(
                "all {} triplets of the file (no run record of the compared model matches it)",
                data.len()
            ),
        ),
        (_, None) => {
            return Err(match record {
                Some(_) => format!(
                    "the compared model's run record is for another file (not `{}`): its \
                     {} rows cannot be told apart here; measure on all triplets or on a \
                     separate test file",
                    data.path.display(),
                    subset.name()
                ),
                None => format!(
                    "the compared model has no run record ({}), so its {} rows are unknown; \
                     measure on all triplets or on a separate test file",
                    super::RUN_RECORD_FILE,
                    subset.name()
                ),
            })
        }
        (Subset::Training, Some(r)) => {
            let t = pick(r.split.train_rows())?;
            let note = format!(
                "measured on the {} triplets the model was trained on",
                t.len()
            );
            (t, note)
        }
        (Subset::HeldOut, Some(r)) => match &r.split {
            Split::HeldOut {
                held_out_rows,
                train_rows,
                ..
            } => {
                let t = pick(held_out_rows)?;
                let note = format!(
                    "trained on {}, measured on {} held-out triplets",
                    train_rows.len(),
                    t.len()
                );
                (t, note)
            }
            Split::ValidationFile { file, .. } => {
                return Err(format!(
                    "the model was trained on every row of this file (it validated on `{}`): \
                     no row is held out; open that file, or measure on a separate test file",
                    file.path.display()
                ))
            }
        },
    };
    if triplets.is_empty() {
        return Err(format!("the {} subset is empty", subset.name()));
    }
    Ok(SubsetRows {
        subset,
        triplets,
        trained_on,
        note,
    })
}

/// An evaluation's metrics on some of its triplets: exactly those of a file holding only them
/// (their distinct documents are the corpus).
pub fn restrict(eval: &Evaluation, data: &Dataset, triplets: &[usize]) -> EvalResult {
    if triplets.len() == data.len() && triplets.iter().enumerate().all(|(i, &t)| i == t) {
        return eval.result.clone();
    }
    let e = &eval.embeddings;
    let pick = |m: &Embeddings| {
        let mut out = Embeddings::new(m.dim);
        triplets.iter().for_each(|&i| out.push(m.row(i)));
        out
    };
    let sub: Vec<_> = triplets.iter().map(|&i| data.triplets[i].clone()).collect();
    evaluate(&RetrievalIndex::build(
        &sub,
        &pick(&e.queries),
        &pick(&e.positives),
        &pick(&e.negatives),
    ))
}

/// Two models on the same triplets.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// What is measured.
    pub rows: SubsetRows,
    /// 0-based file rows measured.
    pub file_rows: Vec<usize>,
    /// The two models as named.
    pub models: [String; 2],
    /// Model A on the subset.
    pub a: EvalResult,
    /// Model B on the subset.
    pub b: EvalResult,
    /// A's metrics with intervals.
    pub a_intervals: BTreeMap<String, Interval>,
    /// B's metrics with intervals.
    pub b_intervals: BTreeMap<String, Interval>,
    /// B − A for every metric, with paired intervals and p-values.
    pub deltas: BTreeMap<String, Delta>,
    /// Resamples behind the intervals and p-values.
    pub resamples: usize,
    /// Their seed.
    pub seed: u64,
}

/// Compares two evaluations of the same file on a subset of its triplets.
pub fn compare(
    data: &Dataset,
    a: &Evaluation,
    b: &Evaluation,
    rows: SubsetRows,
    resamples: usize,
    seed: u64,
) -> Result<Comparison, String> {
    let ra = restrict(a, data, &rows.triplets);
    let rb = restrict(b, data, &rows.triplets);
    let deltas = paired(&ra, &rb, resamples, seed).map_err(|e| e.to_string())?;
    Ok(Comparison {
        file_rows: rows.triplets.iter().map(|&i| data.source_rows[i]).collect(),
        a_intervals: intervals(&ra, resamples, seed),
        b_intervals: intervals(&rb, resamples, seed),
        models: [a.model_label.clone(), b.model_label.clone()],
        a: ra,
        b: rb,
        deltas,
        rows,
        resamples,
        seed,
    })
}

impl Comparison {
    /// The JSON document of `tripletlab compare --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let metrics: serde_json::Map<String, serde_json::Value> = self
            .deltas
            .iter()
            .map(|(k, d)| {
                let v = serde_json::json!({
                    "a": d.a, "b": d.b, "delta": d.delta, "ci95": d.ci95, "p_value": d.p_value,
                    "a_ci95": self.a_intervals[k].ci95, "b_ci95": self.b_intervals[k].ci95,
                });
                (k.clone(), v)
            })
            .collect();
        serde_json::json!({
            "subset": self.rows.subset.name(),
            "note": self.rows.note,
            "n_triplets": self.a.n_triplets,
            "n_queries": self.a.n_queries,
            "n_corpus": self.a.n_corpus,
            "rows": self.file_rows,
            "models": self.models,
            "uncertainty": {
                "method": "95 % percentile bootstrap over queries (paired for deltas); p-value by paired sign-flip permutation over queries",
                "resamples": self.resamples,
                "seed": self.seed,
            },
            "metrics": metrics,
        })
    }
}
