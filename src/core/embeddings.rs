//! A dense row-major matrix of embeddings, the type every layer passes around.

/// `rows` vectors of `dim` floats, row-major.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Embeddings {
    /// Length of each vector.
    pub dim: usize,
    /// `rows * dim` floats.
    pub data: Vec<f32>,
}

impl Embeddings {
    /// An empty matrix of vectors of length `dim`.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            data: Vec::new(),
        }
    }

    /// Wraps row-major data; `data.len()` must be a multiple of `dim`.
    pub fn from_vec(dim: usize, data: Vec<f32>) -> Self {
        assert!(
            dim > 0 && data.len().is_multiple_of(dim),
            "data is not a whole number of rows"
        );
        Self { dim, data }
    }

    /// Number of vectors.
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    /// The `i`-th vector.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Appends a vector.
    pub fn push(&mut self, v: &[f32]) {
        assert_eq!(
            v.len(),
            self.dim,
            "vector length differs from the matrix's dim"
        );
        self.data.extend_from_slice(v);
    }

    /// A new matrix of the given rows, in that order.
    pub fn select(&self, rows: &[usize]) -> Self {
        let mut out = Self {
            dim: self.dim,
            data: Vec::with_capacity(rows.len() * self.dim),
        };
        for &r in rows {
            out.data.extend_from_slice(self.row(r));
        }
        out
    }

    /// Scales every row to unit L2 norm (rows of norm 0 stay 0), as torch's `normalize`.
    pub fn normalize_rows(&mut self) {
        let dim = self.dim;
        for row in self.data.chunks_mut(dim) {
            normalize(row);
        }
    }
}

/// Scales a vector to unit L2 norm, with torch's epsilon of 1e-12 on the norm.
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}
