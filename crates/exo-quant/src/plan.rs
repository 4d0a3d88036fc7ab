//! Choosing one format per tensor under a size budget ([`QuantPlan`]).
//!
//! Each tensor comes with candidate formats, each with its size and a predicted error in a unit
//! shared by all tensors, so that errors add up across tensors (`exo quantize` predicts the KL
//! divergence of the model's output; see exo-models' `convert::adaptive`). Within a tensor,
//! candidates are told apart by [`weighted_error`]: the squared change of the tensor's outputs
//! on calibration activations, `Σ_r Σ_c (W − Ŵ)²_rc · E[x_c²]` (the diagonal of the `XᵀX` that
//! GPTQ and llama.cpp's importance matrix use).
//!
//! The choice is a multiple-choice knapsack, solved greedily on each tensor's lower convex hull
//! of (bytes, error): start every tensor at its smallest candidate, then repeatedly take the
//! upgrade that removes the most error per added byte while it fits. On convex hulls this greedy
//! is optimal up to the last, partially fitting upgrade. What that leaves can be large when a
//! tensor's next hull step is: Qwen2.5-0.5B's 136 M-weight output matrix goes from Q5_0 to Q8_0
//! in one 51 MB step, and `--target-bpw 6` left 32 MB unspent. So the budget left is then spent
//! on any candidate that fits and lowers a tensor's error, on the hull or not, the largest
//! reduction first.

use std::collections::BinaryHeap;

use crate::QuantFormat;

/// One way to store a tensor.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The format.
    pub format: QuantFormat,
    /// Bytes of the tensor in this format.
    pub bytes: u64,
    /// Predicted error, in any unit shared by all candidates of all tensors (exo quantize uses the
    /// predicted KL divergence of the output; see the module docs).
    pub error: f64,
}

/// A tensor and its candidates.
#[derive(Clone, Debug)]
pub struct TensorOptions {
    /// Tensor name.
    pub name: String,
    /// Candidate formats (at least one).
    pub candidates: Vec<Candidate>,
}

/// The chosen format of every tensor.
#[derive(Clone, Debug)]
pub struct QuantPlan {
    /// For each tensor, in the order given: its name and the chosen candidate.
    pub choices: Vec<(String, Candidate)>,
}

impl QuantPlan {
    /// Bytes of all chosen tensors.
    pub fn bytes(&self) -> u64 {
        self.choices.iter().map(|c| c.1.bytes).sum()
    }

    /// Sum of the chosen candidates' predicted errors.
    pub fn error(&self) -> f64 {
        self.choices.iter().map(|c| c.1.error).sum()
    }
}

/// Errors from planning.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Even the smallest candidates exceed the budget.
    #[error("a budget of {budget} bytes for the quantized tensors is below the smallest mix ({smallest} bytes)")]
    Budget {
        /// Bytes allowed.
        budget: u64,
        /// Bytes of the smallest candidates.
        smallest: u64,
    },
    /// A tensor came without candidates.
    #[error("tensor '{0}' has no candidate format")]
    NoCandidate(String),
}

/// `(Σ (x − y)²·w_c, Σ x²·w_c)` over rows of `cols` values, `w_c` the weight of column `c`.
pub fn weighted_error(x: &[f32], y: &[f32], cols: usize, col_weights: &[f64]) -> (f64, f64) {
    let (mut err, mut signal) = (0f64, 0f64);
    for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact(cols)) {
        for ((&a, &b), &w) in xr.iter().zip(yr).zip(col_weights) {
            let d = f64::from(a) - f64::from(b);
            err += d * d * w;
            signal += f64::from(a) * f64::from(a) * w;
        }
    }
    (err, signal)
}

/// The candidates on the lower convex hull of (bytes, error), by increasing size.
fn hull(c: &[Candidate]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..c.len()).collect();
    idx.sort_by(|&a, &b| c[a].bytes.cmp(&c[b].bytes).then(c[a].error.total_cmp(&c[b].error)));
    let mut h: Vec<usize> = Vec::new();
    for i in idx {
        if h.last().is_some_and(|&l| c[l].error <= c[i].error) {
            continue; // no smaller error for more bytes
        }
        // Drop points above the segment from the one before to this one.
        while h.len() >= 2 {
            let (a, b) = (&c[h[h.len() - 2]], &c[h[h.len() - 1]]);
            let slope_ab = (a.error - b.error) / (b.bytes - a.bytes) as f64;
            let slope_ai = (a.error - c[i].error) / (c[i].bytes - a.bytes) as f64;
            if slope_ai >= slope_ab {
                h.pop();
            } else {
                break;
            }
        }
        h.push(i);
    }
    h
}

/// An upgrade of one tensor to the next point of its hull, ordered by error removed per byte.
struct Upgrade {
    gain: f64,
    tensor: usize,
}
impl PartialEq for Upgrade {
    fn eq(&self, o: &Self) -> bool {
        self.gain.total_cmp(&o.gain).is_eq()
    }
}
impl Eq for Upgrade {}
impl PartialOrd for Upgrade {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Upgrade {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.gain.total_cmp(&o.gain).then(o.tensor.cmp(&self.tensor))
    }
}

/// Chooses a candidate per tensor with total bytes at most `budget` and the least total error.
pub fn choose(tensors: &[TensorOptions], budget: u64) -> Result<QuantPlan, PlanError> {
    let hulls: Vec<Vec<usize>> = tensors
        .iter()
        .map(|t| if t.candidates.is_empty() { Err(PlanError::NoCandidate(t.name.clone())) } else { Ok(hull(&t.candidates)) })
        .collect::<Result<_, _>>()?;
    let mut at = vec![0usize; tensors.len()];
    let mut used: u64 = tensors.iter().zip(&hulls).map(|(t, h)| t.candidates[h[0]].bytes).sum();
    if used > budget {
        return Err(PlanError::Budget { budget, smallest: used });
    }
    let step = |t: usize, at: usize| -> Option<(f64, u64)> {
        let h = &hulls[t];
        let (a, b) = (&tensors[t].candidates[*h.get(at)?], &tensors[t].candidates[*h.get(at + 1)?]);
        Some(((a.error - b.error) / (b.bytes - a.bytes) as f64, b.bytes - a.bytes))
    };
    let mut heap: BinaryHeap<Upgrade> =
        (0..tensors.len()).filter_map(|t| step(t, 0).map(|(gain, _)| Upgrade { gain, tensor: t })).collect();
    while let Some(Upgrade { tensor, .. }) = heap.pop() {
        let (_, extra) = step(tensor, at[tensor]).expect("queued upgrades exist");
        if used + extra > budget {
            continue; // this tensor stays; smaller upgrades of others may still fit
        }
        used += extra;
        at[tensor] += 1;
        if let Some((gain, _)) = step(tensor, at[tensor]) {
            heap.push(Upgrade { gain, tensor });
        }
    }
    let mut chosen: Vec<usize> = hulls.iter().zip(&at).map(|(h, &a)| h[a]).collect();
    loop {
        let left = budget - used;
        let best = tensors
            .iter()
            .zip(&chosen)
            .enumerate()
            .flat_map(|(t, (x, &now))| x.candidates.iter().enumerate().map(move |(c, cand)| (t, c, x.candidates[now].error - cand.error, cand.bytes)))
            .filter(|&(t, _, gain, bytes)| gain > 0.0 && bytes <= tensors[t].candidates[chosen[t]].bytes + left)
            .max_by(|a, b| a.2.total_cmp(&b.2));
        let Some((t, c, _, bytes)) = best else { break };
        used = used + bytes - tensors[t].candidates[chosen[t]].bytes;
        chosen[t] = c;
    }
    let choices = tensors.iter().zip(&chosen).map(|(t, &c)| (t.name.clone(), t.candidates[c].clone())).collect();
    Ok(QuantPlan { choices })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgmlType;

    fn cand(bytes: u64, error: f64) -> Candidate {
        Candidate { format: QuantFormat::Ggml(GgmlType::Q8_0), bytes, error }
    }

    /// Every assignment, for comparing the greedy choice with the optimum on small cases.
    fn brute_force(t: &[TensorOptions], budget: u64) -> f64 {
        let mut best = f64::MAX;
        let n: usize = t.iter().map(|x| x.candidates.len()).product();
        for mut code in 0..n {
            let (mut bytes, mut err) = (0, 0.0);
            for x in t {
                let c = &x.candidates[code % x.candidates.len()];
                code /= x.candidates.len();
                bytes += c.bytes;
                err += c.error;
            }
            if bytes <= budget {
                best = best.min(err);
            }
        }
        best
    }

    #[test]
    fn greedy_choice_fits_skips_dominated_candidates_and_is_near_the_optimum() {
        let t = vec![
            TensorOptions { name: "a".into(), candidates: vec![cand(45, 10.0), cand(55, 4.0), cand(65, 2.5), cand(85, 1.0)] },
            TensorOptions { name: "b".into(), candidates: vec![cand(45, 1.0), cand(55, 0.5), cand(65, 0.3), cand(85, 0.1)] },
            // 60 is dominated (more bytes, more error than 55) and must never be chosen.
            TensorOptions { name: "c".into(), candidates: vec![cand(45, 6.0), cand(55, 2.0), cand(60, 3.0), cand(85, 0.2)] },
        ];
        for budget in [135, 145, 155, 165, 175, 195, 255] {
            let p = choose(&t, budget).unwrap();
            assert!(p.bytes() <= budget);
            assert!(p.choices.iter().all(|c| c.1.bytes != 60));
            let opt = brute_force(&t, budget);
            assert!(p.error() <= opt * 1.25 + 1e-12, "budget {budget}: greedy {} vs optimum {opt}", p.error());
        }
        assert_eq!(choose(&t, 255).unwrap().error(), 1.0 + 0.1 + 0.2);
        let e = choose(&t, 100).unwrap_err().to_string();
        assert!(e.contains("100") && e.contains("135"), "{e}");
    }

    #[test]
    fn budget_left_after_a_step_too_large_goes_to_a_candidate_off_the_hull() {
        // "big"'s hull goes from 100 straight to 300 bytes (150 lies above that line); once the
        // greedy has taken "small"'s upgrade, 50 bytes are left: not enough for 300, enough for 150.
        let t = vec![
            TensorOptions { name: "big".into(), candidates: vec![cand(100, 10.0), cand(150, 9.0), cand(300, 0.0)] },
            TensorOptions { name: "small".into(), candidates: vec![cand(10, 2.0), cand(20, 1.0)] },
        ];
        let p = choose(&t, 170).unwrap();
        assert_eq!(p.bytes(), 170);
        assert_eq!(p.error(), brute_force(&t, 170));
        assert_eq!(p.error(), 10.0);
        // Nothing that lowers the error fits: the rest stays unspent.
        assert_eq!(choose(&t, 169).unwrap().bytes(), 120);
    }
}
