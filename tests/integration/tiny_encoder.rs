//! The encoding pipeline on a tiny random BERT: folder settings, pooling, padding, prompts,
//! truncate_dim, cancel and the cache.

use std::collections::BTreeMap;
use std::sync::Arc;

use tripletlab::core::backend::Compute;
use tripletlab::core::cache::EmbeddingCache;
use tripletlab::core::encoder::{
    embed_triplets, EncodeError, EncoderOptions, PromptChoice, PromptSource, Role,
};
use tripletlab::core::jobs::{spawn, CancelToken, JobCtx, Outcome, Update};
use tripletlab::core::model::tiny::TinySpec;
use tripletlab::core::model::Pooling;

use crate::common::{cosine, dev_triplets, encoder, quiet, tiny_model};

const SHORT: &str = "a short text";
const LONG: &str = "a much longer text about rotor blades, turbines and serrated trailing edges of wind energy plants";

#[test]
fn folder_settings_are_read() {
    let dir = tiny_model(&TinySpec {
        max_seq_length: 48,
        ..Default::default()
    });
    let enc = encoder(dir.path(), &EncoderOptions::default());
    assert_eq!(
        (enc.max_seq_len, enc.pooling, enc.normalize, enc.dim()),
        (48, Pooling::Mean, true, 32)
    );
    assert_eq!(enc.prompts.source, PromptSource::None);
    let enc = encoder(
        dir.path(),
        &EncoderOptions {
            max_seq_len: Some(20),
            ..Default::default()
        },
    );
    assert_eq!(enc.max_seq_len, 20);
}

#[test]
fn padding_never_counts_for_any_pooling() {
    let mut seen = Vec::new();
    for pooling in ["mean", "cls", "max"] {
        let dir = tiny_model(&TinySpec {
            pooling: pooling.into(),
            ..Default::default()
        });
        let enc = encoder(dir.path(), &EncoderOptions::default());
        let (alone, _) = quiet(|ctx| enc.encode(&[SHORT], Role::Document, ctx)).unwrap();
        let (batch, _) = quiet(|ctx| enc.encode(&[LONG, SHORT], Role::Document, ctx)).unwrap();
        let c = cosine(alone.row(0), batch.row(1));
        assert!(c > 0.99999, "{pooling}: padded vs alone cosine {c}");
        let norm: f32 = alone.row(0).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "{pooling}: not normalised ({norm})"
        );
        seen.push(alone.row(0).to_vec());
    }
    assert!(
        cosine(&seen[0], &seen[1]) < 0.9999,
        "mean and cls pooling gave the same vector"
    );
    assert!(
        cosine(&seen[0], &seen[2]) < 0.9999,
        "mean and max pooling gave the same vector"
    );
}

#[test]
fn folder_prompts_user_prompts_and_e5_defaults() {
    let mut prompts = BTreeMap::new();
    prompts.insert("query".to_string(), "find: ".to_string());
    prompts.insert("document".to_string(), "doc: ".to_string());
    let dir = tiny_model(&TinySpec {
        prompts,
        ..Default::default()
    });
    let auto = encoder(dir.path(), &EncoderOptions::default());
    assert_eq!(auto.prompts.source, PromptSource::Folder);
    let none = encoder(
        dir.path(),
        &EncoderOptions {
            prompts: PromptChoice::None,
            ..Default::default()
        },
    );
    let (with_prompt, _) = quiet(|ctx| auto.encode(&[SHORT], Role::Query, ctx)).unwrap();
    let (by_hand, _) =
        quiet(|ctx| none.encode(&[&format!("find: {SHORT}")], Role::Query, ctx)).unwrap();
    assert!(cosine(with_prompt.row(0), by_hand.row(0)) > 0.99999);
    let (plain, _) = quiet(|ctx| none.encode(&[SHORT], Role::Query, ctx)).unwrap();
    assert!(
        cosine(with_prompt.row(0), plain.row(0)) < 0.9999,
        "the prompt changed nothing"
    );

    let user = PromptChoice::Custom {
        query: "q> ".into(),
        document: "d> ".into(),
    };
    let custom = encoder(
        dir.path(),
        &EncoderOptions {
            prompts: user,
            ..Default::default()
        },
    );
    assert_eq!(
        (custom.prompts.source, custom.prompt(Role::Document)),
        (PromptSource::User, "d> ")
    );

    // A folder of the e5 family that declares no prompts gets "query: " / "passage: ".
    let parent = tempfile::tempdir().unwrap();
    let e5 = parent.path().join("e5-tiny-v2");
    tripletlab::core::model::tiny::write_tiny_bert(&e5, &TinySpec::default()).unwrap();
    let enc = encoder(&e5, &EncoderOptions::default());
    assert_eq!(enc.prompts.source, PromptSource::E5Default);
    assert_eq!(
        (enc.prompt(Role::Query), enc.prompt(Role::Document)),
        ("query: ", "passage: ")
    );
}

#[test]
fn truncate_dim_keeps_the_first_components_after_normalize() {
    let dir = tiny_model(&TinySpec::default());
    let full = encoder(dir.path(), &EncoderOptions::default());
    let cut = encoder(
        dir.path(),
        &EncoderOptions {
            truncate_dim: Some(8),
            ..Default::default()
        },
    );
    let (a, _) = quiet(|ctx| full.encode(&[LONG], Role::Document, ctx)).unwrap();
    let (b, _) = quiet(|ctx| cut.encode(&[LONG], Role::Document, ctx)).unwrap();
    assert_eq!(b.dim, 8);
    // sentence-transformers' truncate_dim: the first components of the normalised vector, not
    // normalised again.
    assert_eq!(b.row(0), &a.row(0)[..8]);
    let err = tripletlab::core::encoder::Encoder::load(
        &tripletlab::core::model::ModelSource::Dir(dir.path().to_path_buf()),
        &EncoderOptions {
            truncate_dim: Some(33),
            ..Default::default()
        },
        &mut |_| {},
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("truncate_dim 33"), "{err}");
}

#[test]
fn long_texts_are_cut_and_counted() {
    let dir = tiny_model(&TinySpec {
        max_seq_length: 16,
        ..Default::default()
    });
    let enc = encoder(dir.path(), &EncoderOptions::default());
    let counts = quiet(|ctx| enc.token_counts(&[SHORT, LONG], Role::Document, ctx)).unwrap();
    assert!(!counts[0].truncated);
    assert!(
        counts[1].truncated && counts[1].tokens > 16,
        "{:?}",
        counts[1]
    );
    // "a short text" is three words of 1, 5 and 4 letters: 10 pieces plus [CLS] and [SEP].
    assert_eq!(counts[0].tokens, 12);
}

#[test]
fn cancel_before_start_and_while_running() {
    let dir = tiny_model(&TinySpec::default());
    let enc = encoder(
        dir.path(),
        &EncoderOptions {
            batch_size: 4,
            ..Default::default()
        },
    );
    let cancel = CancelToken::new();
    cancel.cancel();
    let emit = |_: Update<()>| {};
    let r = enc.encode(&[SHORT], Role::Query, &JobCtx::new(cancel, &emit));
    assert!(matches!(r, Err(EncodeError::Cancelled)));
    assert_eq!(enc.forward_batches(), 0);

    let enc = Arc::new(enc);
    let texts: Vec<String> = (0..4000).map(|i| format!("{LONG} number {i}")).collect();
    let worker = Arc::clone(&enc);
    let handle = spawn::<(), usize, EncodeError, _>(
        "embed",
        || {},
        move |ctx| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            worker
                .encode(&refs, Role::Document, ctx)
                .map(|(e, _)| e.rows())
        },
    )
    .unwrap();
    // Wait for the first embedding batch, then cancel.
    let start = std::time::Instant::now();
    while enc.forward_batches() == 0 {
        assert!(start.elapsed().as_secs() < 60, "embedding never started");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    handle.cancel();
    let at_cancel = enc.forward_batches();
    let cancelled_at = std::time::Instant::now();
    match handle.wait(|_| {}) {
        Outcome::Finished(Err(EncodeError::Cancelled)) => {}
        other => panic!("expected a cancelled job, got {other:?}"),
    }
    assert!(
        enc.forward_batches() <= at_cancel + 1,
        "more than one batch ran after cancel"
    );
    assert!(
        cancelled_at.elapsed().as_secs_f64() < 5.0,
        "cancel took {:?}",
        cancelled_at.elapsed()
    );
}

#[test]
fn second_run_is_served_from_the_cache_and_corruption_is_recomputed() {
    let dir = tiny_model(&TinySpec::default());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = EmbeddingCache::new(cache_dir.path());
    let triplets = dev_triplets(30);
    let enc = encoder(dir.path(), &EncoderOptions::default());
    let first = quiet(|ctx| embed_triplets(&enc, &triplets, Some(&cache), ctx)).unwrap();
    assert!(first.computed > 0 && first.cache_hits == 0);
    let batches = enc.forward_batches();
    let second = quiet(|ctx| embed_triplets(&enc, &triplets, Some(&cache), ctx)).unwrap();
    assert_eq!(
        enc.forward_batches(),
        batches,
        "the cached run ran the model"
    );
    assert_eq!((second.computed, second.cache_hits), (0, first.computed));
    assert_eq!(second.queries, first.queries);
    assert_eq!(second.negatives, first.negatives);
    assert_eq!(second.token_counts, first.token_counts);

    // Corrupt one byte in every segment file: the damaged records are recomputed.
    for shard in std::fs::read_dir(cache_dir.path()).unwrap() {
        for seg in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let p = seg.unwrap().path();
            let mut bytes = std::fs::read(&p).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
            std::fs::write(&p, bytes).unwrap();
        }
    }
    let third = quiet(|ctx| embed_triplets(&enc, &triplets, Some(&cache), ctx)).unwrap();
    assert!(third.computed > 0, "corruption went unnoticed");
    assert!(!third.cache_warnings.is_empty());
    assert_eq!(third.positives, first.positives);

    // Another max length is another cache key.
    let other = encoder(
        dir.path(),
        &EncoderOptions {
            max_seq_len: Some(20),
            ..Default::default()
        },
    );
    let fourth = quiet(|ctx| embed_triplets(&other, &triplets, Some(&cache), ctx)).unwrap();
    assert_eq!(fourth.cache_hits, 0);
}

#[test]
fn an_unwritable_cache_runs_uncached_and_says_so() {
    let dir = tiny_model(&TinySpec::default());
    let work = tempfile::tempdir().unwrap();
    // A cache folder under a regular file cannot be created (as a full or read-only disk).
    let blocker = work.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let cache = EmbeddingCache::new(blocker.join("cache"));
    let enc = encoder(dir.path(), &EncoderOptions::default());
    let triplets = dev_triplets(10);
    let r = quiet(|ctx| embed_triplets(&enc, &triplets, Some(&cache), ctx)).unwrap();
    assert!(r.computed > 0);
    assert!(
        r.cache_warnings.iter().any(|w| w.contains("not cached")),
        "{:?}",
        r.cache_warnings
    );
    let uncached = quiet(|ctx| embed_triplets(&enc, &triplets, None, ctx)).unwrap();
    assert_eq!(r.queries, uncached.queries);
}

#[test]
fn two_writers_on_one_cache_lose_nothing() {
    let dir = tiny_model(&TinySpec::default());
    let cache_dir = tempfile::tempdir().unwrap();
    let triplets = dev_triplets(40);
    let enc = Arc::new(encoder(dir.path(), &EncoderOptions::default()));
    // Two "instances" embed overlapping halves into the same cache at the same time.
    let halves = [triplets[..25].to_vec(), triplets[15..].to_vec()];
    std::thread::scope(|s| {
        for half in &halves {
            let enc = Arc::clone(&enc);
            let cache = EmbeddingCache::new(cache_dir.path());
            s.spawn(move || quiet(|ctx| embed_triplets(&enc, half, Some(&cache), ctx)).unwrap());
        }
    });
    let before = enc.forward_batches();
    let cache = EmbeddingCache::new(cache_dir.path());
    let all = quiet(|ctx| embed_triplets(&enc, &triplets, Some(&cache), ctx)).unwrap();
    assert_eq!(all.computed, 0, "entries written concurrently were lost");
    assert_eq!(enc.forward_batches(), before);
    assert!(all.cache_warnings.is_empty(), "{:?}", all.cache_warnings);
}

#[test]
fn the_cache_key_changes_with_every_setting_that_changes_a_vector() {
    let opts = |max: usize| EncoderOptions {
        max_seq_len: Some(max),
        prompts: PromptChoice::None,
        ..Default::default()
    };
    let base_model = tiny_model(&TinySpec::default());
    let key =
        |dir: &std::path::Path, o: &EncoderOptions, role: Role| encoder(dir, o).settings_key(role);
    let base = key(base_model.path(), &opts(32), Role::Query);
    assert_eq!(
        base,
        key(base_model.path(), &opts(32), Role::Query),
        "stable"
    );
    assert_eq!(
        base,
        key(base_model.path(), &opts(32), Role::Document),
        "no prompts: one key for both roles"
    );
    let other_weights = tiny_model(&TinySpec {
        seed: 8,
        ..TinySpec::default()
    });
    let cls = tiny_model(&TinySpec {
        pooling: "cls".into(),
        ..TinySpec::default()
    });
    let unnormalised = tiny_model(&TinySpec {
        normalize: false,
        ..TinySpec::default()
    });
    let prompted = EncoderOptions {
        prompts: PromptChoice::Custom {
            query: "query: ".into(),
            document: "passage: ".into(),
        },
        ..opts(32)
    };
    let truncated = EncoderOptions {
        truncate_dim: Some(16),
        ..opts(32)
    };
    let mut variants = vec![
        ("weights", key(other_weights.path(), &opts(32), Role::Query)),
        ("pooling", key(cls.path(), &opts(32), Role::Query)),
        (
            "normalize",
            key(unnormalised.path(), &opts(32), Role::Query),
        ),
        (
            "query prompt",
            key(base_model.path(), &prompted, Role::Query),
        ),
        (
            "document prompt",
            key(base_model.path(), &prompted, Role::Document),
        ),
        ("max length", key(base_model.path(), &opts(16), Role::Query)),
        (
            "truncate_dim",
            key(base_model.path(), &truncated, Role::Query),
        ),
    ];
    // The arithmetic, where this CPU has a second mode.
    if Compute::Bf16.check().is_ok() {
        let bf16 = EncoderOptions {
            compute: Compute::Bf16,
            ..opts(32)
        };
        variants.push(("compute", key(base_model.path(), &bf16, Role::Query)));
    } else {
        eprintln!("compute mode not covered: this CPU has no AVX512-BF16");
    }
    for (i, (name, k)) in variants.iter().enumerate() {
        assert_ne!(*k, base, "{name} does not change the key");
        for (other, k2) in &variants[i + 1..] {
            assert_ne!(k, k2, "{name} and {other} give one key");
        }
    }
    // And through the cache: a vector stored with one setting is not served for another.
    let dir = tempfile::tempdir().unwrap();
    let cache = EmbeddingCache::new(dir.path());
    let triplets = dev_triplets(4);
    let run = |o: &EncoderOptions| {
        quiet(|ctx| embed_triplets(&encoder(base_model.path(), o), &triplets, Some(&cache), ctx))
            .unwrap()
    };
    assert!(run(&opts(32)).computed > 0);
    assert_eq!(run(&opts(32)).computed, 0, "served from the cache");
    assert!(run(&truncated).computed > 0, "truncated vectors recomputed");
    assert!(run(&opts(16)).computed > 0, "shorter texts recomputed");
}
