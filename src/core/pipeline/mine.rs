//! Mining a triplet file's hard negatives as a use case: the distinct queries and corpus (the
//! file's documents and any extra ones), their vectors through the cache, the mining itself
//! ([`crate::core::mining`]), and the rows to write or train on.

use std::collections::HashMap;

use crate::core::cache::EmbeddingCache;
use crate::core::data::{Dataset, Triplet};
use crate::core::embeddings::Embeddings;
use crate::core::encoder::{embed_texts, EncodeError, Encoder, Role};
use crate::core::jobs::{Cancelled, JobCtx};
use crate::core::metrics::dot_f32;
use crate::core::mining::{mine, suspicion, MineConfig, MinedQuery};

/// What mining found for a file.
#[derive(Debug, Clone)]
pub struct Mined {
    /// The distinct queries, in order of first appearance.
    pub queries: Vec<String>,
    /// The corpus: the file's distinct documents (pos, negative, in order of first appearance),
    /// then the extra ones.
    pub corpus: Vec<String>,
    /// Documents of the corpus that come from the file itself.
    pub file_docs: usize,
    /// For each query, the file's own negatives (corpus indices) and their cosines.
    pub original_negatives: Vec<Vec<(usize, f64)>>,
    /// For each query, its positives and mined negatives.
    pub per_query: Vec<MinedQuery>,
    /// The settings.
    pub config: MineConfig,
    /// Warnings of the cache.
    pub warnings: Vec<String>,
}

/// Output layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    /// `{query, pos, negative}`, one row per (query, positive, negative).
    Triplet,
    /// `{query, pos, negative_1, ..., negative_n}`, one row per (query, positive).
    NTuple,
}

/// The texts mining works on: the distinct queries, the corpus, and each query's positives and
/// own negatives (corpus indices).
#[derive(Debug, Clone)]
pub struct MiningInput<'a> {
    /// The distinct queries, in order of first appearance.
    pub queries: Vec<&'a str>,
    /// The file's distinct documents (pos, negative, in order of first appearance), then the
    /// extra ones not already among them.
    pub corpus: Vec<&'a str>,
    /// Documents of the corpus from the file itself.
    pub file_docs: usize,
    /// Each query's positives.
    pub positives: Vec<Vec<usize>>,
    /// Each query's own negatives.
    pub originals: Vec<Vec<usize>>,
}

impl<'a> MiningInput<'a> {
    /// Sentence-transformers' layout of a file plus extra documents.
    pub fn of(data: &'a Dataset, extra_docs: &'a [String]) -> Self {
        let mut q_id: HashMap<&str, usize> = HashMap::new();
        let mut d_id: HashMap<&str, usize> = HashMap::new();
        let (mut queries, mut corpus): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
        let mut positives: Vec<Vec<usize>> = Vec::new();
        let mut originals: Vec<Vec<usize>> = Vec::new();
        for t in &data.triplets {
            let q = *q_id.entry(&t.query).or_insert_with(|| {
                queries.push(&t.query);
                positives.push(Vec::new());
                originals.push(Vec::new());
                queries.len() - 1
            });
            let p = doc(&t.pos, &mut d_id, &mut corpus);
            let n = doc(&t.negative, &mut d_id, &mut corpus);
            if !positives[q].contains(&p) {
                positives[q].push(p);
            }
            if !originals[q].contains(&n) {
                originals[q].push(n);
            }
        }
        let file_docs = corpus.len();
        for t in extra_docs {
            doc(t, &mut d_id, &mut corpus);
        }
        Self {
            queries,
            corpus,
            file_docs,
            positives,
            originals,
        }
    }

    /// The most positives any query has.
    pub fn max_positives(&self) -> usize {
        self.positives.iter().map(Vec::len).max().unwrap_or(1)
    }

    /// Mines with the queries' and the corpus's vectors (L2-normalised, in this input's order).
    pub fn mine(
        &self,
        qv: &Embeddings,
        dv: &Embeddings,
        cfg: &MineConfig,
        warnings: Vec<String>,
        ctx: &JobCtx,
    ) -> Result<Mined, Cancelled> {
        let per_query = mine(qv, dv, &self.positives, cfg, ctx)?;
        let original_negatives = self
            .originals
            .iter()
            .enumerate()
            .map(|(q, ns)| {
                ns.iter()
                    .map(|&d| (d, f64::from(dot_f32(qv.row(q), dv.row(d)))))
                    .collect()
            })
            .collect();
        Ok(Mined {
            queries: self.queries.iter().map(|s| s.to_string()).collect(),
            corpus: self.corpus.iter().map(|s| s.to_string()).collect(),
            file_docs: self.file_docs,
            original_negatives,
            per_query,
            config: cfg.clone(),
            warnings,
        })
    }
}

/// Mines a file's queries against its documents plus `extra_docs`: the texts through the
/// encoder (and the cache), then [`MiningInput::mine`].
pub fn mine_dataset(
    encoder: &Encoder,
    data: &Dataset,
    extra_docs: &[String],
    cfg: &MineConfig,
    cache: Option<&EmbeddingCache>,
    ctx: &JobCtx,
) -> Result<Mined, EncodeError> {
    let input = MiningInput::of(data, extra_docs);
    cfg.check(input.max_positives())
        .map_err(EncodeError::InvalidOption)?;
    let (mut qv, _, _, mut warnings) =
        embed_texts(encoder, &input.queries, Role::Query, cache, ctx)?;
    let (mut dv, _, _, w) = embed_texts(encoder, &input.corpus, Role::Document, cache, ctx)?;
    warnings.extend(w);
    qv.normalize_rows();
    dv.normalize_rows();
    Ok(input.mine(&qv, &dv, cfg, warnings, ctx)?)
}

/// The index of `t` in `corpus`, adding it when new.
fn doc<'a>(t: &'a str, ids: &mut HashMap<&'a str, usize>, corpus: &mut Vec<&'a str>) -> usize {
    *ids.entry(t).or_insert_with(|| {
        corpus.push(t);
        corpus.len() - 1
    })
}

/// Extra corpus documents from a file: a `.txt` file gives one document per non-empty line; any
/// other file is read as triplets and gives its distinct positives and negatives.
pub fn read_corpus(path: &std::path::Path) -> Result<Vec<String>, String> {
    let is_txt = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
    if is_txt {
        let bytes = crate::core::files::read_bounded(path, crate::core::data::MAX_FILE_BYTES)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| format!("{} is not UTF-8: {e}", path.display()))?;
        return Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect());
    }
    let data = crate::core::data::load_triplets(path).map_err(|e| e.to_string())?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for t in &data.triplets {
        for d in [&t.pos, &t.negative] {
            if seen.insert(d.as_str()) {
                out.push(d.clone());
            }
        }
    }
    Ok(out)
}

/// Counts over a mining result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MineSummary {
    /// Distinct queries.
    pub queries: usize,
    /// Corpus documents (the file's, then the extra ones).
    pub corpus: usize,
    /// Of which from the file itself.
    pub file_docs: usize,
    /// Mined negatives in all.
    pub negatives: usize,
    /// Queries that got fewer negatives than asked for (the filters left too few candidates).
    pub short_queries: usize,
    /// Mined negatives flagged as likely false negatives.
    pub suspects: usize,
    /// Mean cosine of the mined negatives.
    pub mean_mined_score: f64,
    /// Mean cosine of the file's own negatives.
    pub mean_original_score: f64,
}

impl Mined {
    /// Why negative `k` of query `q` may be a false negative, if it looks like one.
    pub fn suspicion(&self, q: usize, k: usize) -> Option<String> {
        let m = &self.per_query[q];
        let n = &m.negatives[k];
        m.positives
            .iter()
            .find_map(|&(p, _)| suspicion(n.margin, &self.corpus[n.doc], &self.corpus[p]))
    }

    /// The counts of the result.
    pub fn summary(&self) -> MineSummary {
        let negatives = self.per_query.iter().map(|m| m.negatives.len()).sum();
        let mined_sum: f64 = self
            .per_query
            .iter()
            .flat_map(|m| m.negatives.iter().map(|n| n.score))
            .sum();
        let orig: Vec<f64> = self
            .original_negatives
            .iter()
            .flatten()
            .map(|&(_, s)| s)
            .collect();
        let suspects = (0..self.per_query.len())
            .map(|q| {
                (0..self.per_query[q].negatives.len())
                    .filter(|&k| self.suspicion(q, k).is_some())
                    .count()
            })
            .sum();
        MineSummary {
            queries: self.queries.len(),
            corpus: self.corpus.len(),
            file_docs: self.file_docs,
            negatives,
            short_queries: self
                .per_query
                .iter()
                .filter(|m| m.negatives.len() < self.config.num_negatives)
                .count(),
            suspects,
            mean_mined_score: mined_sum / negatives.max(1) as f64,
            mean_original_score: orig.iter().sum::<f64>() / orig.len().max(1) as f64,
        }
    }

    /// The mined rows in sentence-transformers' order (query, then positive, then negative best
    /// first), keeping a negative when `accept(query, k)` says so.
    pub fn triplets(&self, accept: &dyn Fn(usize, usize) -> bool) -> Vec<Triplet> {
        let mut out = Vec::new();
        for m in &self.per_query {
            for &(p, _) in &m.positives {
                for (k, n) in m.negatives.iter().enumerate() {
                    if accept(m.query, k) {
                        out.push(Triplet {
                            query: self.queries[m.query].clone(),
                            pos: self.corpus[p].clone(),
                            negative: self.corpus[n.doc].clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// The rows as JSON lines.
    pub fn to_jsonl(&self, format: RowFormat, accept: &dyn Fn(usize, usize) -> bool) -> String {
        let mut s = String::new();
        match format {
            RowFormat::Triplet => {
                for t in self.triplets(accept) {
                    s.push_str(&serde_json::json!({"query": t.query, "pos": t.pos, "negative": t.negative}).to_string());
                    s.push('\n');
                }
            }
            RowFormat::NTuple => {
                for m in &self.per_query {
                    let kept: Vec<&str> = m
                        .negatives
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| accept(m.query, *k))
                        .map(|(_, n)| self.corpus[n.doc].as_str())
                        .collect();
                    if kept.is_empty() {
                        continue;
                    }
                    for &(p, _) in &m.positives {
                        let mut row = serde_json::Map::new();
                        row.insert("query".into(), self.queries[m.query].clone().into());
                        row.insert("pos".into(), self.corpus[p].clone().into());
                        for (k, n) in kept.iter().enumerate() {
                            row.insert(format!("negative_{}", k + 1), (*n).into());
                        }
                        s.push_str(&serde_json::Value::Object(row).to_string());
                        s.push('\n');
                    }
                }
            }
        }
        s
    }
}
