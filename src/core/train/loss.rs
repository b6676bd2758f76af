//! The training losses, with sentence-transformers' definitions and defaults. Inputs are sentence
//! vectors (b, h) with the autograd graph attached; outputs are scalar losses.

use candle_core::{DType, Result, Tensor, D};

/// MultipleNegativesRankingLoss: cross-entropy over `scale`·cos(a_i, c_j) against every candidate
/// c = [positives; negatives], the target of row i being positive i.
pub fn mnrl(
    anchors: &Tensor,
    positives: &Tensor,
    negatives: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let b_sz = anchors.dim(0)?;
    let a = l2_normalize(anchors)?;
    let mut cands = vec![l2_normalize(positives)?];
    if let Some(n) = negatives {
        cands.push(l2_normalize(n)?);
    }
    let cands = Tensor::cat(&cands, 0)?;
    let logits = (a.matmul(&cands.t()?)? * scale)?;
    let targets = Tensor::arange(0u32, b_sz as u32, anchors.device())?;
    candle_nn::loss::cross_entropy(&logits, &targets)
}

/// ContrastiveLoss with cosine distance d = 1 − cos: mean of 0.5·[y·d² + (1−y)·max(0, m−d)²].
/// `labels` holds 1.0 for similar pairs and 0.0 for dissimilar ones, shape (b,).
pub fn contrastive(a: &Tensor, b: &Tensor, labels: &Tensor, margin: f64) -> Result<Tensor> {
    let cos = (l2_normalize(a)? * l2_normalize(b)?)?.sum(D::Minus1)?;
    let d = (1.0 - cos)?;
    let y = labels.to_dtype(DType::F32)?;
    let similar = (&y * d.sqr()?)?;
    let dissimilar = ((1.0 - &y)? * (margin - &d)?.relu()?.sqr()?)?;
    ((similar + dissimilar)? * 0.5)?.mean_all()
}

/// TripletLoss with Euclidean distance: mean of max(0, ‖a−p‖ − ‖a−n‖ + margin).
pub fn triplet(a: &Tensor, p: &Tensor, n: &Tensor, margin: f64) -> Result<Tensor> {
    let dist = |x: &Tensor, y: &Tensor| -> Result<Tensor> {
        // torch's pairwise_distance adds eps = 1e-6 to the difference before the norm.
        ((x - y)? + 1e-6)?.sqr()?.sum(D::Minus1)?.sqrt()
    };
    ((dist(a, p)? - dist(a, n)?)? + margin)?.relu()?.mean_all()
}

/// Differentiable row-wise L2 normalisation of (b, h), with torch's epsilon of 1e-12.
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    xs.broadcast_div(&norm)
}
