//! Case-insensitive text search over a dataset's triplets, fast enough for every keystroke: each
//! distinct text is lowercased once, and a search tests each distinct text once.

use std::collections::HashMap;

use super::Dataset;

/// Lowercased distinct texts and, per triplet, which of them are its query, positive, negative.
#[derive(Debug, Clone, Default)]
pub struct TextSearch {
    lower: Vec<String>,
    ids: Vec<[u32; 3]>,
}

impl TextSearch {
    /// Indexes a dataset (linear in its size; run it off the UI thread).
    pub fn new(data: &Dataset) -> Self {
        let mut index: HashMap<&str, u32> = HashMap::new();
        let mut lower = Vec::new();
        let mut ids = Vec::with_capacity(data.triplets.len());
        for t in &data.triplets {
            let mut row = [0u32; 3];
            for (slot, text) in row.iter_mut().zip([&t.query, &t.pos, &t.negative]) {
                *slot = *index.entry(text.as_str()).or_insert_with(|| {
                    lower.push(text.to_lowercase());
                    (lower.len() - 1) as u32
                });
            }
            ids.push(row);
        }
        Self { lower, ids }
    }

    /// For each triplet, whether one of its texts contains `needle` (ignoring case). An empty
    /// needle matches everything.
    pub fn matches(&self, needle: &str) -> Vec<bool> {
        let needle = needle.to_lowercase();
        if needle.is_empty() {
            return vec![true; self.ids.len()];
        }
        let hit: Vec<bool> = self.lower.iter().map(|t| t.contains(&needle)).collect();
        self.ids
            .iter()
            .map(|ids| ids.iter().any(|&i| hit[i as usize]))
            .collect()
    }

    /// Distinct texts indexed.
    pub fn distinct_texts(&self) -> usize {
        self.lower.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::data::parse_triplets;

    #[test]
    fn finds_triplets_by_any_text_ignoring_case() {
        let text = r#"[
            {"query": "Wind Turbine", "pos": "a rotor blade", "negative": "a battery"},
            {"query": "battery pack", "pos": "Lithium CELL", "negative": "a rotor blade"},
            {"query": "antibody", "pos": "protein dose", "negative": "a battery"}
        ]"#;
        let d = parse_triplets(std::path::Path::new("t.json"), text.as_bytes()).unwrap();
        let s = TextSearch::new(&d);
        assert_eq!(s.distinct_texts(), 7);
        assert_eq!(s.matches("ROTOR"), vec![true, true, false]);
        assert_eq!(s.matches("lithium cell"), vec![false, true, false]);
        assert_eq!(s.matches("battery"), vec![true, true, true]);
        assert_eq!(s.matches(""), vec![true, true, true]);
        assert_eq!(s.matches("nothing like it"), vec![false, false, false]);
    }
}
