//! Hard-negative mining: the (query, negative) pairs equal sentence-transformers'
//! `mine_hard_negatives` on the same vectors, similarities are held in bounded blocks with
//! progress and cancel, and `tripletlab mine` writes rows the trainer reads (triplets and
//! n-tuples) and trains on with several negatives per example.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tripletlab::core::data::load_triplets;
use tripletlab::core::embeddings::Embeddings;
use tripletlab::core::jobs::{CancelToken, JobCtx, Update};
use tripletlab::core::mining::{block_rows, mine, MineConfig, BLOCK_BYTES};
use tripletlab::core::model::tiny::TinySpec;
use tripletlab::core::pipeline::mine::MiningInput;
use tripletlab::core::report::read_npy_f32;

use crate::common::{dev_triplets, fixture, ok, tiny_model, tripletlab};

#[test]
fn mined_pairs_equal_sentence_transformers_on_the_same_vectors() {
    let data = load_triplets(&fixture("patents-dev.json")).unwrap();
    // sentence-transformers' own vectors of the file: queries, then positives, then negatives.
    let npy = read_npy_f32(&fixture("patents-dev-minilm-seq256.npy")).unwrap();
    let n = data.len();
    let mut row_of: HashMap<&str, usize> = HashMap::new();
    for (i, t) in data.triplets.iter().enumerate() {
        row_of.entry(&t.query).or_insert(i);
        row_of.entry(&t.pos).or_insert(n + i);
        row_of.entry(&t.negative).or_insert(2 * n + i);
    }
    let input = MiningInput::of(&data, &[]);
    let take = |texts: &[&str]| {
        let mut v = Vec::new();
        for t in texts {
            v.extend_from_slice(npy.row(row_of[t]));
        }
        let mut e = Embeddings::from_vec(npy.dim, v);
        e.normalize_rows();
        e
    };
    let (qv, dv) = (take(&input.queries), take(&input.corpus));
    let cfg = MineConfig {
        range_max: Some(50),
        relative_margin: Some(0.05),
        num_negatives: 3,
        ..MineConfig::default()
    };
    let emit = |_: Update<()>| {};
    let ctx = JobCtx::new(CancelToken::new(), &emit);
    let mined = input.mine(&qv, &dv, &cfg, Vec::new(), &ctx).unwrap();
    // Ours as [dev row of the query's first appearance, corpus index of the negative].
    let first_row: HashMap<&str, usize> = data
        .triplets
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| (t.query.as_str(), i))
        .collect();
    let ours: Vec<[usize; 2]> = mined
        .per_query
        .iter()
        .flat_map(|m| {
            let q = first_row[mined.queries[m.query].as_str()];
            m.negatives.iter().map(move |neg| [q, neg.doc])
        })
        .collect();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("mined/st-dev-r50-m005-n3.json")).unwrap())
            .unwrap();
    let theirs: Vec<[usize; 2]> = reference["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            [
                r[0].as_u64().unwrap() as usize,
                r[1].as_u64().unwrap() as usize,
            ]
        })
        .collect();
    let (a, b): (HashSet<_>, HashSet<_>) = (ours.iter().collect(), theirs.iter().collect());
    let jaccard = a.intersection(&b).count() as f64 / a.union(&b).count() as f64;
    assert_eq!(theirs.len(), 1476);
    assert_eq!(
        ours.len(),
        theirs.len(),
        "as many rows as sentence-transformers"
    );
    assert!(
        jaccard >= 0.99,
        "Jaccard of (query, negative) pairs {jaccard}"
    );
    let same_order = ours.iter().zip(&theirs).filter(|(x, y)| x == y).count();
    assert!(
        same_order as f64 >= 0.99 * theirs.len() as f64,
        "{same_order} of {} rows in the same place",
        theirs.len()
    );
    // What the file's mined rows look like: a query's positive is never one of its negatives.
    for m in &mined.per_query {
        for neg in &m.negatives {
            assert!(m.positives.iter().all(|&(p, _)| p != neg.doc));
            assert!(
                neg.score <= m.positives[0].1 * 0.95 + 1e-6,
                "relative margin kept"
            );
        }
    }
}

#[test]
fn similarities_are_computed_in_bounded_blocks_with_progress_and_cancel() {
    assert_eq!(block_rows(1000), 256);
    assert_eq!(block_rows(1_000_000), BLOCK_BYTES / 4_000_000);
    assert_eq!(
        block_rows(usize::MAX / 8),
        1,
        "at least one query per block"
    );
    let dim = 8;
    let unit = |seed: usize, n: usize| {
        let v: Vec<f32> = (0..n * dim)
            .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let mut e = Embeddings::from_vec(dim, v);
        e.normalize_rows();
        e
    };
    let (queries, corpus) = (unit(1, 700), unit(2, 900));
    let positives: Vec<Vec<usize>> = (0..700).map(|q| vec![q]).collect();
    let progress = Mutex::new(Vec::new());
    let cancel = CancelToken::new();
    let emit = |u: Update<()>| {
        if let Update::Progress(p) = u {
            progress.lock().unwrap().push(p.done);
            cancel.cancel();
        }
    };
    let ctx = JobCtx::new(cancel.clone(), &emit);
    let cfg = MineConfig::default();
    assert!(
        mine(&queries, &corpus, &positives, &cfg, &ctx).is_err(),
        "cancelled after a block"
    );
    assert_eq!(
        *progress.lock().unwrap(),
        vec![256],
        "one progress report per block of 256"
    );
    let emit_all = |u: Update<()>| {
        if let Update::Progress(p) = u {
            progress.lock().unwrap().push(p.done);
        }
    };
    progress.lock().unwrap().clear();
    let fresh = JobCtx::new(CancelToken::new(), &emit_all);
    let all = mine(&queries, &corpus, &positives, &cfg, &fresh).unwrap();
    assert_eq!(*progress.lock().unwrap(), vec![256, 512, 700]);
    assert!(all.iter().all(|m| m.negatives.len() == 3));
}

#[test]
fn mine_writes_rows_that_finetune_trains_on_with_several_negatives() {
    let model = tiny_model(&TinySpec::default());
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n).to_str().unwrap().to_string();
    let triplets = dev_triplets(40);
    std::fs::write(p("data.json"), serde_json::to_string(&triplets).unwrap()).unwrap();
    // An extra corpus as plain text, one document per line.
    let extra: Vec<String> = dev_triplets(80)[40..]
        .iter()
        .map(|t| t.pos.clone())
        .collect();
    std::fs::write(p("extra.txt"), extra.join("\n")).unwrap();
    let cache = work.path().join("cache");
    let base = model.path().to_str().unwrap();
    let mine_to = |out: &str, format: &str| {
        ok(tripletlab(
            &[
                "mine",
                "--data",
                &p("data.json"),
                "--model",
                base,
                "--prompts",
                "none",
                "--corpus",
                &p("extra.txt"),
                "--num-negatives",
                "2",
                "--range-max",
                "10",
                "--format",
                format,
                "--out",
                &p(out),
                "--json",
                &p("mined.json"),
            ],
            &cache,
        ))
    };
    let log = mine_to("rows.jsonl", "triplet");
    assert!(
        log.contains(
            "Mined 80 negatives for 40 queries from 120 documents (80 of the file, 40 extra)"
        ),
        "{log}"
    );
    mine_to("tuples.jsonl", "n-tuple");
    let rows = load_triplets(std::path::Path::new(&p("rows.jsonl"))).unwrap();
    let tuples = load_triplets(std::path::Path::new(&p("tuples.jsonl"))).unwrap();
    assert_eq!(rows.len(), 80);
    assert_eq!(
        rows.triplets, tuples.triplets,
        "n-tuple rows read back as the same triplets"
    );
    assert_eq!(
        std::fs::read_to_string(p("tuples.jsonl"))
            .unwrap()
            .lines()
            .count(),
        40
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p("mined.json")).unwrap()).unwrap();
    assert_eq!(report["summary"]["negatives"], 80);
    assert_eq!(
        report["queries"][0]["negatives"].as_array().unwrap().len(),
        2
    );
    let positives: HashSet<(&str, &str)> = triplets
        .iter()
        .map(|t| (t.query.as_str(), t.pos.as_str()))
        .collect();
    for t in &rows.triplets {
        assert!(positives.contains(&(t.query.as_str(), t.pos.as_str())));
        assert_ne!(
            t.negative, t.pos,
            "a query's positive is never its negative"
        );
    }
    let log = ok(tripletlab(
        &[
            "finetune",
            "--data",
            &p("tuples.jsonl"),
            "--val",
            &p("data.json"),
            "--model",
            base,
            "--out",
            &p("ft"),
            "--batch-size",
            "8",
            "--max-negatives",
            "2",
            "--mini-batch",
            "5",
            "--lr",
            "1e-3",
            "--eval-steps",
            "0",
            "--prompts",
            "none",
            "--json",
            &p("log.json"),
        ],
        &cache,
    ));
    let train_log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p("log.json")).unwrap()).unwrap();
    // 40 examples of 2 negatives each in batches of 8: at least 5 steps (more when a mined
    // negative is another example's positive: no text twice in a batch), and fewer than the 10
    // that 80 rows one by one would take at the least.
    let steps = train_log["steps"].as_array().unwrap().len();
    assert!((5..10).contains(&steps), "{steps} steps: {log}");
    assert_eq!(train_log["config"]["max_negatives"], 2);
    assert_eq!(train_log["config"]["mini_batch"], 5);
}
