//! Content-addressed embedding cache on disk. A vector's key is two hashes: the encoder settings
//! (weights, pooling, normalisation, prompt, max length, truncate_dim) name a shard folder, the text
//! names the record. Shards are append-only segment files written atomically (temporary file, then
//! rename), so concurrent runs never see half a file; every record carries a checksum, so a
//! truncated or corrupt entry is skipped and recomputed.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest cache segment read (one run's vectors; a larger file there is not ours).
const SEGMENT_LIMIT_BYTES: u64 = 4 << 30;
/// Segment file magic and version.
const MAGIC: &[u8; 4] = b"TLEC";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 12;
const KEY_LEN: usize = 32;
const CHECKSUM_LEN: usize = 8;
/// More segments than this in a shard are merged into one on the next load.
const MAX_SEGMENTS: usize = 16;

/// One cached vector and the token count of its text.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedVector {
    /// The embedding.
    pub vector: Vec<f32>,
    /// Tokens of the full text (before truncation), special tokens included.
    pub tokens: u32,
}

/// The vectors of one settings key found on disk.
#[derive(Debug, Default)]
pub struct Shard {
    /// Text key -> vector.
    pub vectors: HashMap<[u8; KEY_LEN], CachedVector>,
    /// Records that failed their checksum or were cut short.
    pub corrupt_records: usize,
    /// Problems reading the shard (it is then partly or wholly ignored).
    pub warnings: Vec<String>,
}

/// The cache rooted at a folder.
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    root: PathBuf,
}

/// The key of a text.
pub fn text_key(text: &str) -> [u8; KEY_LEN] {
    *blake3::hash(text.as_bytes()).as_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A name unlikely to collide between processes and threads.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(&nanos.to_le_bytes());
    hex(&h.finalize().as_bytes()[..8])
}

impl EmbeddingCache {
    /// `$TRIPLETLAB_CACHE_DIR`, else `$XDG_CACHE_HOME/tripletlab/embeddings`, else
    /// `~/.cache/tripletlab/embeddings`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("TRIPLETLAB_CACHE_DIR") {
            return PathBuf::from(d);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("tripletlab").join("embeddings")
    }

    /// A cache in `root` (created on first store).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn shard_dir(&self, settings: &[u8; KEY_LEN]) -> PathBuf {
        self.root.join(hex(settings))
    }

    /// Reads every segment of a shard. Never fails: unreadable parts become warnings.
    pub fn load(&self, settings: &[u8; KEY_LEN], dim: usize) -> Shard {
        let dir = self.shard_dir(settings);
        let mut shard = Shard::default();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return shard,
            Err(e) => {
                shard
                    .warnings
                    .push(format!("cannot read cache folder {}: {e}", dir.display()));
                return shard;
            }
        };
        let segments: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        let mut readable = Vec::with_capacity(segments.len());
        for path in &segments {
            match crate::core::files::read_bounded(path, SEGMENT_LIMIT_BYTES) {
                Ok(bytes) => {
                    if read_segment(&bytes, dim, path, &mut shard) {
                        readable.push(path.clone());
                    }
                }
                // Another instance may have merged and removed it since we listed the folder.
                Err(crate::core::files::ReadError::Io(e))
                    if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => shard
                    .warnings
                    .push(format!("cannot read {}: {e}", path.display())),
            }
        }
        let worth_merging = readable.len() > MAX_SEGMENTS || shard.corrupt_records > 0;
        if worth_merging && !shard.vectors.is_empty() {
            self.compact(settings, dim, &shard, &readable);
        }
        shard
    }

    /// Merges a shard's segments into one; failures leave the old segments in place.
    fn compact(&self, settings: &[u8; KEY_LEN], dim: usize, shard: &Shard, old: &[PathBuf]) {
        let entries = shard
            .vectors
            .iter()
            .map(|(k, v)| (*k, v.vector.as_slice(), v.tokens));
        if self.store(settings, dim, entries).is_ok() {
            for p in old {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// Writes vectors as a new segment (temporary file, then rename).
    pub fn store<'a>(
        &self,
        settings: &[u8; KEY_LEN],
        dim: usize,
        entries: impl IntoIterator<Item = ([u8; KEY_LEN], &'a [f32], u32)>,
    ) -> std::io::Result<()> {
        let dir = self.shard_dir(settings);
        std::fs::create_dir_all(&dir)?;
        let mut buf = Vec::with_capacity(HEADER_LEN);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&(dim as u32).to_le_bytes());
        let mut count = 0usize;
        for (key, vector, tokens) in entries {
            assert_eq!(vector.len(), dim, "cached vector has the wrong length");
            let start = buf.len();
            buf.extend_from_slice(&key);
            buf.extend_from_slice(&tokens.to_le_bytes());
            for x in vector {
                buf.extend_from_slice(&x.to_le_bytes());
            }
            let sum = blake3::hash(&buf[start..]);
            buf.extend_from_slice(&sum.as_bytes()[..CHECKSUM_LEN]);
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        let name = unique_name();
        let tmp = dir.join(format!(".{name}.tmp"));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(format!("{name}.seg")))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Adds a segment's valid records to the shard; false when the file is not a segment of this dim.
fn read_segment(bytes: &[u8], dim: usize, path: &Path, shard: &mut Shard) -> bool {
    let header_ok = bytes.len() >= HEADER_LEN
        && &bytes[..4] == MAGIC
        && bytes[4..8] == VERSION.to_le_bytes()
        && bytes[8..12] == (dim as u32).to_le_bytes();
    if !header_ok {
        shard.warnings.push(format!(
            "ignoring cache file {} (bad header)",
            path.display()
        ));
        return false;
    }
    let record_len = KEY_LEN + 4 + dim * 4 + CHECKSUM_LEN;
    let body = &bytes[HEADER_LEN..];
    let mut records = body.chunks_exact(record_len);
    for rec in &mut records {
        let (payload, sum) = rec.split_at(record_len - CHECKSUM_LEN);
        if &blake3::hash(payload).as_bytes()[..CHECKSUM_LEN] != sum {
            shard.corrupt_records += 1;
            continue;
        }
        let key: [u8; KEY_LEN] = payload[..KEY_LEN].try_into().expect("key length");
        let tokens = u32::from_le_bytes(payload[KEY_LEN..KEY_LEN + 4].try_into().expect("u32"));
        let vector = payload[KEY_LEN + 4..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("f32")))
            .collect();
        shard.vectors.insert(key, CachedVector { vector, tokens });
    }
    if !records.remainder().is_empty() {
        shard.corrupt_records += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::new(dir.path());
        let settings = [7u8; 32];
        let a = text_key("a");
        let b = text_key("b");
        cache
            .store(
                &settings,
                2,
                [(a, &[1.0f32, 2.0][..], 5), (b, &[3.0f32, 4.0][..], 6)],
            )
            .unwrap();
        let shard = cache.load(&settings, 2);
        assert_eq!(
            shard.vectors[&a],
            CachedVector {
                vector: vec![1.0, 2.0],
                tokens: 5
            }
        );
        assert_eq!(shard.corrupt_records, 0);

        // Flip a byte of the second record's vector and cut the file short by a few bytes.
        let seg = first_segment(&cache, &settings);
        let mut bytes = std::fs::read(&seg).unwrap();
        let record_len = 32 + 4 + 8 + 8;
        bytes[HEADER_LEN + record_len + 40] ^= 0xFF;
        std::fs::write(&seg, &bytes).unwrap();
        let shard = cache.load(&settings, 2);
        assert_eq!(shard.corrupt_records, 1);
        assert!(shard.vectors.contains_key(&a));
        assert!(!shard.vectors.contains_key(&b));

        // The load above compacted the shard: the corrupt record is gone for good.
        let shard = cache.load(&settings, 2);
        assert_eq!(shard.corrupt_records, 0);
        assert_eq!(shard.vectors.len(), 1);

        // A different dim (another model) never reads these records as its own.
        let other = cache.load(&settings, 3);
        assert!(other.vectors.is_empty());
    }

    /// A segment file of the shard.
    fn first_segment(cache: &EmbeddingCache, settings: &[u8; KEY_LEN]) -> PathBuf {
        std::fs::read_dir(cache.shard_dir(settings))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap()
    }

    fn segments(cache: &EmbeddingCache, settings: &[u8; KEY_LEN]) -> usize {
        std::fs::read_dir(cache.shard_dir(settings))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count()
    }

    /// A missing shard is simply empty; a shard that cannot be listed (its folder is a file)
    /// or a segment that cannot be read (a folder named like one) is a warning.
    #[test]
    fn missing_shards_are_quiet_and_unreadable_ones_are_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::new(dir.path());
        let missing = cache.load(&[1u8; 32], 2);
        assert!(missing.vectors.is_empty() && missing.warnings.is_empty());
        std::fs::write(cache.shard_dir(&[2u8; 32]), b"not a folder").unwrap();
        let unlistable = cache.load(&[2u8; 32], 2);
        assert!(
            unlistable.warnings[0].starts_with("cannot read cache folder"),
            "{:?}",
            unlistable.warnings
        );
        let settings = [3u8; 32];
        cache
            .store(&settings, 2, [(text_key("a"), &[1f32, 2.][..], 1)])
            .unwrap();
        std::fs::create_dir(cache.shard_dir(&settings).join("odd.seg")).unwrap();
        let shard = cache.load(&settings, 2);
        assert_eq!(shard.vectors.len(), 1);
        assert_eq!(shard.warnings.len(), 1, "{:?}", shard.warnings);
        assert!(
            shard.warnings[0].contains("odd.seg"),
            "{:?}",
            shard.warnings
        );
        #[cfg(unix)]
        {
            // A segment gone between listing and reading (another process merged it; here a
            // dangling link) is quiet; one the OS cannot open for another reason (a link loop)
            // is a warning.
            let shard_dir = cache.shard_dir(&settings);
            std::fs::remove_dir(shard_dir.join("odd.seg")).unwrap();
            std::os::unix::fs::symlink(shard_dir.join("nowhere"), shard_dir.join("gone.seg"))
                .unwrap();
            let shard = cache.load(&settings, 2);
            assert!(shard.warnings.is_empty(), "{:?}", shard.warnings);
            std::os::unix::fs::symlink(shard_dir.join("loop.seg"), shard_dir.join("loop.seg"))
                .unwrap();
            let shard = cache.load(&settings, 2);
            assert_eq!(shard.warnings.len(), 1, "{:?}", shard.warnings);
            assert!(
                shard.warnings[0].contains("loop.seg"),
                "{:?}",
                shard.warnings
            );
        }
    }

    /// Segments are merged into one above 16 (not at 16), and whenever a record is corrupt.
    #[test]
    fn shards_merge_above_sixteen_segments() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::new(dir.path());
        let settings = [4u8; 32];
        let v = [0.5f32, 1.5];
        for i in 0..MAX_SEGMENTS {
            let key = text_key(&i.to_string());
            cache.store(&settings, 2, [(key, &v[..], 1)]).unwrap();
        }
        assert_eq!(cache.load(&settings, 2).vectors.len(), MAX_SEGMENTS);
        assert_eq!(segments(&cache, &settings), MAX_SEGMENTS, "merged at 16");
        let key = text_key("one more");
        cache.store(&settings, 2, [(key, &v[..], 1)]).unwrap();
        let shard = cache.load(&settings, 2);
        assert_eq!(shard.vectors.len(), MAX_SEGMENTS + 1);
        assert_eq!(segments(&cache, &settings), 1, "not merged at 17");
        assert_eq!(cache.load(&settings, 2).vectors.len(), MAX_SEGMENTS + 1);
    }

    /// A segment whose magic, version or width is not this one's is ignored with a warning,
    /// each of the three on its own.
    #[test]
    fn a_segment_with_a_foreign_header_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::new(dir.path());
        let settings = [5u8; 32];
        cache
            .store(&settings, 2, [(text_key("a"), &[1f32, 2.][..], 1)])
            .unwrap();
        let seg = first_segment(&cache, &settings);
        let good = std::fs::read(&seg).unwrap();
        for (at, what) in [(0, "magic"), (4, "version"), (8, "width")] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            let mut shard = Shard::default();
            assert!(!read_segment(&bad, 2, &seg, &mut shard), "{what}");
            assert!(shard.vectors.is_empty(), "{what}");
            assert!(shard.warnings[0].contains("bad header"), "{what}");
        }
        let mut shard = Shard::default();
        assert!(read_segment(&good, 2, &seg, &mut shard));
        assert_eq!(shard.vectors.len(), 1);
    }

    /// A segment cut short (a run killed while writing it, before atomic renames were used, or
    /// a damaged disk) keeps its whole records and counts the cut one as corrupt.
    #[test]
    fn a_segment_cut_short_keeps_its_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::new(dir.path());
        let settings = [6u8; 32];
        let (a, b) = (text_key("a"), text_key("b"));
        cache
            .store(
                &settings,
                2,
                [(a, &[1f32, 2.][..], 1), (b, &[3f32, 4.][..], 1)],
            )
            .unwrap();
        let seg = first_segment(&cache, &settings);
        let bytes = std::fs::read(&seg).unwrap();
        let mut shard = Shard::default();
        assert!(read_segment(&bytes[..bytes.len() - 5], 2, &seg, &mut shard));
        assert_eq!(shard.corrupt_records, 1);
        assert_eq!(shard.vectors.len(), 1);
        assert!(shard.vectors.contains_key(&a));
    }

    /// The cache's folder: `$TRIPLETLAB_CACHE_DIR` when set, else under the user's cache folder.
    #[test]
    fn the_default_folder_is_the_users_cache() {
        let dir = EmbeddingCache::default_dir();
        match std::env::var_os("TRIPLETLAB_CACHE_DIR") {
            Some(set) => assert_eq!(dir, PathBuf::from(set)),
            None => assert!(dir.ends_with("tripletlab/embeddings"), "{}", dir.display()),
        }
    }
}
