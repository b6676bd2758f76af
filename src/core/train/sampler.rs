//! How triplets become batches and how a validation set is held out; all seeded.

use std::collections::HashSet;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::core::data::Triplet;

/// Holds out `share` of the distinct queries with all their triplets: (train, validation).
pub fn split_by_query(triplets: &[Triplet], share: f64, seed: u64) -> (Vec<Triplet>, Vec<Triplet>) {
    let (train, val) = split_rows_by_query(triplets, share, seed);
    let pick = |rows: Vec<usize>| rows.into_iter().map(|i| triplets[i].clone()).collect();
    (pick(train), pick(val))
}

/// [`split_by_query`] as triplet indices, each list in file order: (train, validation).
pub fn split_rows_by_query(
    triplets: &[Triplet],
    share: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut queries: Vec<&str> = Vec::new();
    let mut seen = HashSet::new();
    for t in triplets {
        if seen.insert(t.query.as_str()) {
            queries.push(&t.query);
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    queries.shuffle(&mut rng);
    let n_val = ((queries.len() as f64) * share).round() as usize;
    let val: HashSet<&str> = queries.into_iter().take(n_val).collect();
    (0..triplets.len()).partition(|&i| !val.contains(triplets[i].query.as_str()))
}

/// Batches of triplet indices in which no text occurs twice (sentence-transformers'
/// NoDuplicatesBatchSampler): a duplicate text would be a false in-batch negative.
pub fn no_duplicate_batches(
    triplets: &[Triplet],
    batch_size: usize,
    rng: &mut impl rand::Rng,
) -> Vec<Vec<usize>> {
    let texts: Vec<Vec<&str>> = triplets
        .iter()
        .map(|t| vec![t.query.as_str(), t.pos.as_str(), t.negative.as_str()])
        .collect();
    no_duplicate_batches_of(&texts, batch_size, rng)
}

/// [`no_duplicate_batches`] over examples of any number of texts (`texts[i]`: example i's).
pub fn no_duplicate_batches_of(
    texts: &[Vec<&str>],
    batch_size: usize,
    rng: &mut impl rand::Rng,
) -> Vec<Vec<usize>> {
    let examples = texts;
    let mut remaining: Vec<usize> = (0..examples.len()).collect();
    remaining.shuffle(rng);
    let mut batches = Vec::new();
    while !remaining.is_empty() {
        let mut texts: HashSet<&str> = HashSet::new();
        let mut batch = Vec::with_capacity(batch_size);
        for &i in &remaining {
            let values = &examples[i];
            if values.iter().any(|v| texts.contains(v)) {
                continue;
            }
            batch.push(i);
            texts.extend(values.iter().copied());
            if batch.len() == batch_size {
                break;
            }
        }
        let taken: HashSet<usize> = batch.iter().copied().collect();
        remaining.retain(|i| !taken.contains(i));
        batches.push(batch);
    }
    batches
}

/// Shuffled batches of `0..n` of `batch_size` (the last may be smaller).
pub fn shuffled_batches(n: usize, batch_size: usize, rng: &mut impl rand::Rng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

/// transformers' linear schedule: warm up from 0 over `warmup_steps`, then decay to 0 at `total`.
/// `step` is 0-based (the first update uses the learning rate of step 0).
pub fn linear_lr(step: usize, total: usize, warmup_steps: usize, peak: f64) -> f64 {
    if step < warmup_steps {
        peak * step as f64 / warmup_steps.max(1) as f64
    } else {
        peak * (total.saturating_sub(step)) as f64
            / (total.saturating_sub(warmup_steps)).max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(q: &str, p: &str, n: &str) -> Triplet {
        Triplet {
            query: q.into(),
            pos: p.into(),
            negative: n.into(),
        }
    }

    #[test]
    fn batches_never_repeat_a_text() {
        let data: Vec<Triplet> = (0..40)
            .map(|i| {
                t(
                    &format!("q{}", i % 7),
                    &format!("p{}", i % 11),
                    &format!("n{i}"),
                )
            })
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let batches = no_duplicate_batches(&data, 8, &mut rng);
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..40).collect::<Vec<_>>(),
            "every triplet is used once"
        );
        for b in &batches {
            let mut texts = HashSet::new();
            for &i in b {
                for v in [&data[i].query, &data[i].pos, &data[i].negative] {
                    assert!(texts.insert(v.clone()), "text {v} twice in a batch");
                }
            }
        }
        // Batches fill up to the batch size when nothing conflicts.
        let distinct: Vec<Triplet> = (0..20)
            .map(|i| t(&format!("q{i}"), &format!("p{i}"), &format!("n{i}")))
            .collect();
        let sizes: Vec<usize> = no_duplicate_batches(&distinct, 8, &mut rng)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [8, 8, 4]);
    }

    /// Every index once, in batches of the batch size (the last smaller), in a seeded random
    /// order.
    #[test]
    fn shuffled_batches_cover_every_index_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let batches = shuffled_batches(10, 4, &mut rng);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let flat: Vec<usize> = batches.concat();
        assert_ne!(flat, (0..10).collect::<Vec<_>>(), "shuffled");
        let mut sorted = flat;
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn split_keeps_queries_whole() {
        let data: Vec<Triplet> = (0..50)
            .map(|i| t(&format!("q{}", i % 10), "p", &format!("n{i}")))
            .collect();
        let (train, val) = split_by_query(&data, 0.2, 3);
        assert_eq!(val.len(), 10);
        let vq: HashSet<_> = val.iter().map(|t| &t.query).collect();
        assert_eq!(vq.len(), 2);
        assert!(train.iter().all(|t| !vq.contains(&t.query)));
    }

    #[test]
    fn schedule_matches_transformers() {
        // 32 steps, ceil(10 %) = 4 warm-up steps, peak 2e-5: the reference run's first values.
        let lrs: Vec<f64> = (0..6).map(|s| linear_lr(s, 32, 4, 2e-5)).collect();
        let want = [0.0, 5e-6, 1e-5, 1.5e-5, 2e-5, 1.928571428571429e-5];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
        // Without warm-up the first step runs at the peak and the decay reaches 0 at the end.
        assert_eq!(linear_lr(0, 10, 0, 1.0), 1.0);
        assert_eq!(linear_lr(5, 10, 0, 1.0), 0.5);
        assert_eq!(linear_lr(10, 10, 0, 1.0), 0.0);
    }
}
