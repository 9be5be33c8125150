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

/// Where a distilled student's soft targets come from.
enum Targets<'a> {
    /// Hard labels only (teacher pretraining and the baseline).
    Labels,
    /// Soft targets from the teacher: its logits for the whole training set computed once
    /// (`cached`, looked up by sample index) when inputs are not jittered, else the live
    /// teacher run on the very batch the student sees.
    Teacher { teacher: &'a Model, cached: Option<Tensor>, config: DistillConfig },
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
    fit(teacher, Phase::Teacher, data, config, &Targets::Labels, None, on_epoch)
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
    let teacher_test = teacher.map(|t| predict(t, &data.test.images).argmax(-1, false));
    fit(student, Phase::Baseline, data, config, &Targets::Labels, teacher_test.as_ref(), on_epoch)
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
    ensure!(
        student.classes == teacher.classes,
        "the teacher has {} classes but the student {}",
        teacher.classes,
        student.classes
    );
    let cached = (config.jitter == 0).then(|| predict(teacher, &data.train.images));
    let targets = Targets::Teacher { teacher, cached, config: *distill };
    let teacher_test = predict(teacher, &data.test.images).argmax(-1, false);
    fit(student, Phase::Student, data, config, &targets, Some(&teacher_test), on_epoch)
}

fn fit(
    model: &Model,
    phase: Phase,
    data: &Mnist,
    config: &PhaseConfig,
    targets: &Targets,
    teacher_test: Option<&Tensor>,
    on_epoch: &mut dyn FnMut(&EpochRecord) -> Result<()>,
) -> Result<Vec<EpochRecord>> {
    ensure!(!data.train.is_empty(), "the training set is empty");
    tch::manual_seed(config.seed);
    let mut optimizer =
        nn::Sgd { momentum: config.momentum, wd: config.weight_decay, ..Default::default() }
            .build(&model.vs, config.lr)?;
    let steps_per_epoch = (data.train.len() + config.batch_size - 1) / config.batch_size;
    let mut records = vec![];

    for epoch in 1..=config.epochs {
        let start = Instant::now();
        let first_step = (epoch - 1) * steps_per_epoch;
        let train_loss = train_epoch(model, &mut optimizer, data, config, targets, first_step)?;
        ensure!(
            train_loss.is_finite(),
            "{} phase, epoch {epoch}: the training loss became {train_loss}; try a lower --lr",
            phase.name()
        );

        let eval = evaluate(model, &data.test, teacher_test);
        let record = EpochRecord {
            phase,
            epoch,
            train_loss,
            test_loss: eval.loss,
            test_acc: eval.accuracy,
            test_errors: eval.errors,
            agreement: eval.agreement,
            lr: config.schedule.lr(
                config.lr,
                first_step + steps_per_epoch - 1,
                steps_per_epoch * config.epochs,
            ),
            seconds: start.elapsed().as_secs_f64(),
        };
        on_epoch(&record)?;
        records.push(record);
    }
    Ok(records)
}

/// One pass over the training set; returns the mean training loss.
fn train_epoch(
    model: &Model,
    optimizer: &mut nn::Optimizer,
    data: &Mnist,
    config: &PhaseConfig,
    targets: &Targets,
    first_step: i64,
) -> Result<f64> {
    let n = data.train.len();
    let batches = epoch_batches(n, config.batch_size, model.device());
    let total_steps = config.epochs * batches.len() as i64;
    let progress = progress_bar(batches.len() as u64);
    // Summed as a tensor so the device never waits on the host inside the epoch.
    let mut loss_sum = Tensor::zeros([], (Kind::Float, model.device()));

    for (i, index) in batches.iter().enumerate() {
        optimizer.set_lr(config.schedule.lr(config.lr, first_step + i as i64, total_steps));
        let (images, labels) = data.train.batch(index);
        let images = jitter(&images, config.jitter);

        let logits = model.forward_t(&images, true);
        let loss = batch_loss(targets, &logits, &images, &labels, index);
        optimizer.backward_step(&loss);
        model.apply_constraints();

        loss_sum += loss.detach() * index.size()[0] as f64;
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(loss_sum.double_value(&[]) / n as f64)
}

fn batch_loss(
    targets: &Targets,
    logits: &Tensor,
    images: &Tensor,
    labels: &Tensor,
    index: &Tensor,
) -> Tensor {
    match targets {
        Targets::Labels => cross_entropy(logits, labels),
        Targets::Teacher { teacher, cached, config } => {
            let teacher_logits = match cached {
                Some(all) => all.index_select(0, index),
                None => tch::no_grad(|| teacher.forward_t(images, false)),
            };
            distillation_loss(
                logits,
                &teacher_logits,
                labels,
                config.temperature,
                config.alpha,
                config.kd_loss,
            )
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
        accuracy: 1.0 - errors as f64 / n as f64,
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
    /// lookup and the live teacher must give the same loss for a shuffled batch.
    #[test]
    fn cached_teacher_logits_belong_to_the_batch_samples() {
        tch::manual_seed(1);
        let teacher = Model::new(&"mlp:16".parse().unwrap(), CLASSES, tch::Device::Cpu);
        let images = Tensor::rand([50, IMAGE_PIXELS], (Kind::Float, tch::Device::Cpu));
        let labels = Tensor::randint(CLASSES, [50], (Kind::Int64, tch::Device::Cpu));
        let config = DistillConfig { temperature: 3.0, alpha: 1.0, kd_loss: KdLoss::Kl };
        let cached = Targets::Teacher {
            teacher: &teacher,
            cached: Some(predict(&teacher, &images)),
            config,
        };
        let live = Targets::Teacher { teacher: &teacher, cached: None, config };

        let index = Tensor::from_slice(&[42i64, 3, 17, 9, 30]);
        let (batch, batch_labels) =
            (images.index_select(0, &index), labels.index_select(0, &index));
        let student = Tensor::rand([5, CLASSES], (Kind::Float, tch::Device::Cpu));
        let from_cache =
            batch_loss(&cached, &student, &batch, &batch_labels, &index).double_value(&[]);
        let from_teacher =
            batch_loss(&live, &student, &batch, &batch_labels, &index).double_value(&[]);
        assert!((from_cache - from_teacher).abs() < 1e-6, "{from_cache} vs {from_teacher}");
        assert!(from_cache > 0.0);
    }

    #[test]
    fn the_cosine_schedule_falls_from_the_peak_to_zero() {
        assert_eq!(Schedule::Cosine.lr(0.1, 0, 100), 0.1);
        assert!((Schedule::Cosine.lr(0.1, 50, 100) - 0.05).abs() < 1e-12);
        assert!(Schedule::Cosine.lr(0.1, 100, 100).abs() < 1e-12);
        assert_eq!(Schedule::Constant.lr(0.1, 70, 100), 0.1);
    }
}
