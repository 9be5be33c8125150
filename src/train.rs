//! The three training phases (teacher pretraining, student baseline, student distillation), the
//! epoch loop they share, and evaluation.
//!
//! Every phase reseeds libtorch's generator with its `seed` before building its model and before
//! its first epoch, so the baseline and the distilled student start from the same weights and
//! see the same batches: the only difference between them is the teacher. The teacher is always
//! run in evaluation mode, without gradients, and is never handed to an optimizer.

use std::time::Instant;

use anyhow::{Result, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

use crate::data::{Mnist, Split, epoch_batches, jitter};
use crate::loss::{KdLoss, cross_entropy, distillation_loss};
use crate::models::{Model, ModelSpec};

/// Batch size for evaluation and teacher prediction, where no gradient is kept.
const EVAL_BATCH: i64 = 2000;

/// Optimisation settings of one phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseConfig {
    pub epochs: i64,
    pub batch_size: i64,
    /// Peak learning rate of SGD with momentum.
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    /// Random shift of each training image by up to this many pixels (0: none).
    pub jitter: i64,
    pub seed: i64,
}

/// How the learning rate moves over a phase.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Half a cosine from the peak down to zero at the last step.
    Cosine,
    /// The peak throughout.
    Constant,
}

impl Schedule {
    /// The learning rate at `step` (from 0) of `total` steps.
    pub fn lr(self, peak: f64, step: i64, total: i64) -> f64 {
        match self {
            Schedule::Constant => peak,
            Schedule::Cosine => {
                0.5 * peak * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos())
            }
        }
    }
}

/// The distillation settings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct DistillConfig {
    pub temperature: f64,
    /// Weight of the soft (teacher) term; the hard-label term gets 1 - alpha.
    pub alpha: f64,
    pub kd_loss: KdLoss,
}

/// Which phase an epoch belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Teacher,
    Baseline,
    Student,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Teacher => "teacher",
            Phase::Baseline => "baseline",
            Phase::Student => "student",
        }
    }
}

/// Test-set figures of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub errors: i64,
    /// Fraction of test samples where the model's top class equals the teacher's.
    pub agreement: Option<f64>,
    /// Test errors per true class.
    pub class_errors: Vec<i64>,
}

/// One row of `metrics.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub phase: Phase,
    pub epoch: i64,
    pub train_loss: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub test_errors: i64,
    pub agreement: Option<f64>,
    pub lr: f64,
    pub seconds: f64,
}

/// What a model in training is fitted to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// Hard labels only (teacher pretraining and the baseline).
    Labels,
    /// The distillation loss with these settings.
    Distill(DistillConfig),
}

/// One model of a training group. All members of a group see the same batches (and the same
/// teacher logits); each has its own optimizer.
pub struct Member<'a> {
    pub model: &'a Model,
    pub phase: Phase,
    pub objective: Objective,
}

/// A trained teacher prepared for a data set, once for any number of students: its predicted
/// classes on the test set (for agreement) and, when the students' inputs are not jittered, its
/// logits for the whole training set, looked up by sample index so they always belong to the
/// batch's samples. With jitter the teacher runs on the very batch the students see. Either way
/// one lookup or forward serves every member of a training group.
pub struct TeacherTargets<'a> {
    teacher: &'a Model,
    cached: Option<Tensor>,
    test_classes: Tensor,
}

impl<'a> TeacherTargets<'a> {
    /// Prepares `teacher` for students trained with `jitter`; `soft_targets` is false when the
    /// students only report agreement (baselines) and need no training-set logits.
    pub fn new(teacher: &'a Model, data: &Mnist, jitter: i64, soft_targets: bool) -> Self {
        let cached = (soft_targets && jitter == 0).then(|| predict(teacher, &data.train.images));
        let test_classes = predict(teacher, &data.test.images).argmax(-1, false);
        TeacherTargets { teacher, cached, test_classes }
    }

    fn logits(&self, images: &Tensor, index: &Tensor, jittered: bool) -> Tensor {
        match (&self.cached, jittered) {
            (Some(all), false) => all.index_select(0, index),
            _ => tch::no_grad(|| self.teacher.forward_t(images, false)),
        }
    }
}

/// Builds `spec` with weights drawn after seeding libtorch's generator with `seed`.
pub fn seeded_model(spec: &ModelSpec, classes: i64, device: tch::Device, seed: i64) -> Model {
    tch::manual_seed(seed);
    Model::new(spec, classes, device)
}

/// Phase 1: trains the teacher on hard labels.
pub fn train_teacher(
    teacher: &Model,
    data: &Mnist,
    config: &PhaseConfig,
    on_epoch: &mut dyn FnMut(&EpochRecord) -> Result<()>,
) -> Result<Vec<EpochRecord>> {
    let member = Member { model: teacher, phase: Phase::Teacher, objective: Objective::Labels };
    train_one(member, None, data, config, on_epoch)
}

/// Phase 2: trains the student on hard labels alone, the no-distillation reference. With a
/// `teacher`, each epoch also reports the student's agreement with it.
pub fn train_baseline(
    student: &Model,
    teacher: Option<&Model>,
    data: &Mnist,
    config: &PhaseConfig,
    on_epoch: &mut dyn FnMut(&EpochRecord) -> Result<()>,
) -> Result<Vec<EpochRecord>> {
    let member = Member { model: student, phase: Phase::Baseline, objective: Objective::Labels };
    let targets = teacher.map(|t| TeacherTargets::new(t, data, config.jitter, false));
    train_one(member, targets.as_ref(), data, config, on_epoch)
}

/// Phase 3: distills `teacher` into `student` with
/// [`distillation_loss`](crate::loss::distillation_loss).
pub fn distill(
    student: &Model,
    teacher: &Model,
    data: &Mnist,
    config: &PhaseConfig,
    distill: &DistillConfig,
    on_epoch: &mut dyn FnMut(&EpochRecord) -> Result<()>,
) -> Result<Vec<EpochRecord>> {
    let objective = Objective::Distill(*distill);
    let member = Member { model: student, phase: Phase::Student, objective };
    let targets = TeacherTargets::new(teacher, data, config.jitter, true);
    train_one(member, Some(&targets), data, config, on_epoch)
}

fn train_one(
    member: Member,
    teacher: Option<&TeacherTargets>,
    data: &Mnist,
    config: &PhaseConfig,
    on_epoch: &mut dyn FnMut(&EpochRecord) -> Result<()>,
) -> Result<Vec<EpochRecord>> {
    let mut records = train_group(&[member], teacher, data, config, &mut |_, r| on_epoch(r))?;
    Ok(records.remove(0))
}

/// Trains `members` together: libtorch's generator is seeded with `config.seed`, then every
/// epoch draws one batch order (and, with jitter, one shift per image) that all members share.
/// A group of one gives the same numbers as training that model alone; with several members
/// whose models use dropout, the dropout draws interleave and the numbers differ.
///
/// With a `teacher`, each epoch reports every member's agreement with it. `on_epoch` gets the
/// member's position and its epoch record. Returns the records of each member.
pub fn train_group(
    members: &[Member],
    teacher: Option<&TeacherTargets>,
    data: &Mnist,
    config: &PhaseConfig,
    on_epoch: &mut dyn FnMut(usize, &EpochRecord) -> Result<()>,
) -> Result<Vec<Vec<EpochRecord>>> {
    ensure!(!data.train.is_empty(), "the training set is empty");
    let distills = members.iter().any(|m| matches!(m.objective, Objective::Distill(_)));
    ensure!(teacher.is_some() || !distills, "distillation needs a teacher");
    if let Some(targets) = teacher {
        for member in members {
            ensure!(
                member.model.classes == targets.teacher.classes,
                "the teacher has {} classes but the student {}",
                targets.teacher.classes,
                member.model.classes
            );
        }
    }

    tch::manual_seed(config.seed);
    let mut optimizers = members
        .iter()
        .map(|m| {
            nn::Sgd { momentum: config.momentum, wd: config.weight_decay, ..Default::default() }
                .build(&m.model.vs, config.lr)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let steps_per_epoch = (data.train.len() + config.batch_size - 1) / config.batch_size;
    let mut records = vec![vec![]; members.len()];

    for epoch in 1..=config.epochs {
        let first_step = (epoch - 1) * steps_per_epoch;
        let losses = train_epoch(members, &mut optimizers, teacher, data, config, first_step);
        for (k, member) in members.iter().enumerate() {
            let (train_loss, train_seconds) = losses[k];
            ensure!(
                train_loss.is_finite(),
                "{} phase, epoch {epoch}: the training loss became {train_loss}; try a lower --lr \
                 (or a temperature nearer 1)",
                member.phase.name()
            );
            let start = Instant::now();
            let eval = evaluate(member.model, &data.test, teacher.map(|t| &t.test_classes));
            let last_step = first_step + steps_per_epoch - 1;
            let record = EpochRecord {
                phase: member.phase,
                epoch,
                train_loss,
                test_loss: eval.loss,
                test_acc: eval.accuracy,
                test_errors: eval.errors,
                agreement: eval.agreement,
                lr: config.schedule.lr(config.lr, last_step, steps_per_epoch * config.epochs),
                seconds: train_seconds + start.elapsed().as_secs_f64(),
            };
            on_epoch(k, &record)?;
            records[k].push(record);
        }
    }
    Ok(records)
}

/// One pass over the training set for every member; returns each member's mean training loss
/// and its seconds (its own steps plus an equal share of the work the group shares).
fn train_epoch(
    members: &[Member],
    optimizers: &mut [nn::Optimizer],
    teacher: Option<&TeacherTargets>,
    data: &Mnist,
    config: &PhaseConfig,
    first_step: i64,
) -> Vec<(f64, f64)> {
    let n = data.train.len();
    let device = members[0].model.device();
    let distills = members.iter().any(|m| matches!(m.objective, Objective::Distill(_)));
    let jittered = config.jitter > 0;
    let batches = epoch_batches(n, config.batch_size, device);
    let total_steps = config.epochs * batches.len() as i64;
    let progress = progress_bar(batches.len() as u64);
    // Summed as tensors so the device never waits on the host inside the epoch.
    let mut loss_sums: Vec<Tensor> =
        members.iter().map(|_| Tensor::zeros([], (Kind::Float, device))).collect();
    let mut own_seconds = vec![0.0; members.len()];
    let mut shared_seconds = 0.0;

    for (step, index) in batches.iter().enumerate() {
        let shared_start = Instant::now();
        let lr = config.schedule.lr(config.lr, first_step + step as i64, total_steps);
        let (images, labels) = data.train.batch(index);
        let images = jitter(&images, config.jitter);
        let teacher_logits =
            teacher.filter(|_| distills).map(|t| t.logits(&images, index, jittered));
        shared_seconds += shared_start.elapsed().as_secs_f64();

        for (k, (member, optimizer)) in members.iter().zip(optimizers.iter_mut()).enumerate() {
            let start = Instant::now();
            optimizer.set_lr(lr);
            let logits = member.model.forward_t(&images, true);
            let loss = member_loss(member.objective, &logits, teacher_logits.as_ref(), &labels);
            optimizer.backward_step(&loss);
            member.model.apply_constraints();
            loss_sums[k] += loss.detach() * index.size()[0] as f64;
            own_seconds[k] += start.elapsed().as_secs_f64();
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let share = shared_seconds / members.len() as f64;
    loss_sums
        .iter()
        .zip(own_seconds)
        .map(|(sum, own)| (sum.double_value(&[]) / n as f64, own + share))
        .collect()
}

fn member_loss(
    objective: Objective,
    logits: &Tensor,
    teacher: Option<&Tensor>,
    labels: &Tensor,
) -> Tensor {
    match objective {
        Objective::Labels => cross_entropy(logits, labels),
        Objective::Distill(c) => {
            let teacher =
                teacher.expect("train_group computes teacher logits when a member distills");
            distillation_loss(logits, teacher, labels, c.temperature, c.alpha, c.kd_loss)
        }
    }
}

/// Logits of `model` for every row of `images`, in evaluation mode and without gradients.
pub fn predict(model: &Model, images: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let chunks: Vec<Tensor> =
            images.split(EVAL_BATCH, 0).iter().map(|xs| model.forward_t(xs, false)).collect();
        Tensor::cat(&chunks, 0)
    })
}

/// Test loss, accuracy, errors (in total and per true class) and, given the teacher's
/// predicted classes for the same samples, the top-1 agreement with the teacher.
pub fn evaluate(model: &Model, split: &Split, teacher_classes: Option<&Tensor>) -> Evaluation {
    let logits = predict(model, &split.images);
    evaluation_from_logits(&logits, &split.labels, teacher_classes)
}

/// [`evaluate`] on logits already computed (by any model, TorchScript ones included).
pub fn evaluation_from_logits(
    logits: &Tensor,
    labels: &Tensor,
    teacher_classes: Option<&Tensor>,
) -> Evaluation {
    let n = labels.size()[0];
    let predicted = logits.argmax(-1, false);
    let wrong = predicted.ne_tensor(labels);
    let errors = wrong.sum(Kind::Int64).int64_value(&[]);
    let class_errors = labels
        .masked_select(&wrong)
        .bincount::<Tensor>(None, logits.size()[1])
        .to_device(tch::Device::Cpu);

    Evaluation {
        loss: cross_entropy(logits, labels).double_value(&[]),
        accuracy: (n - errors) as f64 / n as f64,
        errors,
        agreement: teacher_classes.map(|t| {
            predicted.eq_tensor(t).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
        }),
        class_errors: Vec::<i64>::try_from(&class_errors).expect("bincount gives int64"),
    }
}

fn progress_bar(steps: u64) -> ProgressBar {
    if crate::report::quiet() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} batches {per_sec} eta {eta}")
            .expect("the progress template is valid"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{CLASSES, IMAGE_PIXELS};

    /// Regression test for cached teacher logits paired with the wrong samples: the cached
    /// lookup must give the live teacher's logits for a shuffled batch.
    #[test]
    fn cached_teacher_logits_belong_to_the_batch_samples() {
        tch::manual_seed(1);
        let teacher = Model::new(&"mlp:16".parse().unwrap(), CLASSES, tch::Device::Cpu);
        let images = Tensor::rand([50, IMAGE_PIXELS], (Kind::Float, tch::Device::Cpu));
        let test_classes = Tensor::zeros([1], (Kind::Int64, tch::Device::Cpu));
        let cached = TeacherTargets {
            teacher: &teacher,
            cached: Some(predict(&teacher, &images)),
            test_classes,
        };

        let index = Tensor::from_slice(&[42i64, 3, 17, 9, 30]);
        let batch = images.index_select(0, &index);
        let from_cache = cached.logits(&batch, &index, false);
        let from_teacher = cached.logits(&batch, &index, true);
        let difference = (&from_cache - &from_teacher).abs().max().double_value(&[]);
        assert!(difference < 1e-6, "cached and live logits differ by {difference}");
        let in_order = Tensor::arange(5, (Kind::Int64, tch::Device::Cpu));
        let unshuffled = cached.logits(&batch, &in_order, false);
        assert!((&unshuffled - &from_teacher).abs().max().double_value(&[]) > 1e-3);
    }

    #[test]
    fn the_cosine_schedule_falls_from_the_peak_to_zero() {
        assert_eq!(Schedule::Cosine.lr(0.1, 0, 100), 0.1);
        assert!((Schedule::Cosine.lr(0.1, 50, 100) - 0.05).abs() < 1e-12);
        assert!(Schedule::Cosine.lr(0.1, 100, 100).abs() < 1e-12);
        assert_eq!(Schedule::Constant.lr(0.1, 70, 100), 0.1);
    }
}
