//! The losses: hard-label cross-entropy and the distillation loss of Hinton, Vinyals and Dean,
//! "Distilling the Knowledge in a Neural Network" (2015).
//!
//! Everything is computed from log-softmax values, never from probabilities that could round
//! to zero, so very low temperatures and confident teachers stay finite.

use std::fmt;
use std::str::FromStr;

use anyhow::bail;
use tch::{Kind, Tensor};

/// How the student's softened distribution is compared with the teacher's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KdLoss {
    /// KL(p_teacher || p_student): zero when the two distributions agree.
    Kl,
    /// Cross-entropy -sum p_teacher log p_student: the KL plus the teacher's entropy, so the
    /// same gradient with respect to the student and a value that never reaches zero.
    SoftCe,
}

impl FromStr for KdLoss {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        match text {
            "kl" => Ok(KdLoss::Kl),
            "soft-ce" => Ok(KdLoss::SoftCe),
            _ => bail!("unknown distillation loss '{text}' (expected kl or soft-ce)"),
        }
    }
}

impl fmt::Display for KdLoss {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            KdLoss::Kl => "kl",
            KdLoss::SoftCe => "soft-ce",
        })
    }
}

/// Cross-entropy of `logits` `[batch, classes]` against class indices `labels` `[batch]`
/// (int64), averaged over the batch. A scalar tensor.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.log_softmax(-1, Kind::Float).nll_loss(labels)
}

/// The soft-target term `T^2 * KD(softmax(teacher / T), softmax(student / T))`.
///
/// - `student`, `teacher`: logits `[batch, classes]`; no gradient flows into `teacher`.
/// - `temperature` T > 0: both sets of logits are divided by T before the softmax.
/// - KD is [`KdLoss::Kl`] or [`KdLoss::SoftCe`], summed over classes and averaged over the
///   batch (not over classes).
/// - The T^2 factor keeps the gradient's scale independent of T, since softened gradients
///   shrink as 1/T^2; this is the paper's correction.
///
/// Returns a scalar tensor.
pub fn soft_target_loss(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
    kind: KdLoss,
) -> Tensor {
    let log_p_student = (student / temperature).log_softmax(-1, Kind::Float);
    let log_p_teacher = (teacher.detach() / temperature).log_softmax(-1, Kind::Float);
    let p_teacher = log_p_teacher.exp();

    let per_sample = match kind {
        KdLoss::Kl => {
            (p_teacher * (log_p_teacher - log_p_student)).sum_dim_intlist(-1, false, Kind::Float)
        }
        KdLoss::SoftCe => -(p_teacher * log_p_student).sum_dim_intlist(-1, false, Kind::Float),
    };
    per_sample.mean(Kind::Float) * (temperature * temperature)
}

/// The distillation loss
/// ```text
/// (1 - alpha) * CE(student, labels) + alpha * T^2 * KD(softmax(teacher / T), softmax(student / T))
/// ```
///
/// `alpha` in [0, 1] weights the soft (teacher) term: alpha = 1 trains on the teacher alone,
/// alpha = 0 is plain cross-entropy. The hard term uses the student's logits at temperature 1.
/// See [`soft_target_loss`] for the soft term's reduction and shapes. Returns a scalar tensor.
pub fn distillation_loss(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    temperature: f64,
    alpha: f64,
    kind: KdLoss,
) -> Tensor {
    let soft = soft_target_loss(student, teacher, temperature, kind);
    if alpha == 1.0 {
        return soft;
    }
    cross_entropy(student, labels) * (1.0 - alpha) + soft * alpha
}
