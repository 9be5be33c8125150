//! The three training phases (teacher pretraining, student baseline, student distillation), the
//! epoch loop they share, and evaluation.
//!
//! Every phase seeds libtorch's generator with its `seed` before building its model, and with
//! [`epoch_seed`] before each epoch, so the baseline and the distilled student start from the
//! same weights and see the same batches (the only difference between them is the teacher), and
//! a phase resumed after its k-th epoch draws what an uninterrupted one draws. After every epoch
//! a phase hands its model, optimizer and records to its caller, which saves them. The teacher
//! is always run in evaluation mode, without gradients, and is never handed to an optimizer.

use std::time::Instant;

use anyhow::{Result, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::checkpoint::PhaseState;
use crate::data::{Mnist, Split, epoch_batches, jitter};
use crate::interrupt::Interrupted;
use crate::loss::{KdLoss, cross_entropy, distillation_loss};
use crate::models::{Arch, Model, ModelSpec};
use crate::optim::Sgd;
use crate::teacher::{Ensemble, Teacher, soft_target_logits};

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
    /// Epochs over which the learning rate first rises linearly to its peak, before the
    /// schedule runs over the remaining steps (0: none; runs from before it read as 0).
    #[serde(default)]
    pub warmup_epochs: i64,
    /// Random shift of each training image by up to this many pixels (0: none).
    pub jitter: i64,
    pub seed: i64,
}

impl PhaseConfig {
    /// The learning rate of `step` (from 0) of a phase of `total` steps: a linear rise over
    /// the warm-up steps to the peak, reached at the warm-up's last step, then the schedule
    /// over the steps after it.
    pub fn lr_at(&self, step: i64, total: i64) -> f64 {
        let warmup = (self.warmup_epochs * total / self.epochs.max(1)).min(total);
        if step < warmup {
            return self.lr * (step + 1) as f64 / warmup as f64;
        }
        self.schedule.lr(self.lr, step - warmup, total - warmup)
    }
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
    pub model: &'a mut Model,
    pub phase: Phase,
    pub objective: Objective,
    /// The state to continue from (the model already holds its weights), or `None` to start.
    pub resume: Option<PhaseState>,
}

/// What `on_epoch` gets when a member finishes an epoch.
pub struct EpochEnd<'a> {
    /// The member's position in its group.
    pub member: usize,
    pub record: &'a EpochRecord,
    /// Every record of the member's phase so far, this one included.
    pub records: &'a [EpochRecord],
    pub model: &'a Model,
    pub optimizer: &'a Sgd,
}

/// The callback of a phase's epochs; errors stop training.
pub type OnEpoch<'a> = dyn FnMut(&EpochEnd) -> Result<()> + 'a;

/// A teacher prepared for a data set, once for any number of students: its predicted classes on
/// the test set (for agreement) and, when the students' inputs are not jittered, its members'
/// logits for the whole training set, looked up by sample index so they always belong to the
/// batch's samples. With jitter the teacher runs on the very batch the students see. Either way
/// one lookup or forward serves every member of a training group.
pub struct TeacherTargets<'a> {
    teacher: &'a Teacher,
    /// `[teacher members, n, classes]`.
    cached: Option<Tensor>,
    test_classes: Tensor,
}

impl<'a> TeacherTargets<'a> {
    /// Prepares `teacher` for students trained with `jitter`; `soft_targets` is false when the
    /// students only report agreement (baselines) and need no training-set logits.
    pub fn new(teacher: &'a Teacher, data: &Mnist, jitter: i64, soft_targets: bool) -> Self {
        let cached =
            (soft_targets && jitter == 0).then(|| teacher.member_logits(&data.train.images));
        let test_classes = teacher.logits(&data.test.images).argmax(-1, false);
        TeacherTargets { teacher, cached, test_classes }
    }

    /// The members' logits `[members, b, classes]` for the batch `images` (the samples `index`).
    fn logits(&self, images: &Tensor, index: &Tensor, jittered: bool) -> Tensor {
        match (&self.cached, jittered) {
            (Some(all), false) => all.index_select(1, index),
            _ => self.teacher.member_logits(images),
        }
    }
}

/// Builds `spec` with weights drawn after seeding libtorch's generator with `seed`.
pub fn seeded_model(spec: &ModelSpec, classes: i64, device: tch::Device, seed: i64) -> Model {
    tch::manual_seed(seed);
    Model::new(spec, classes, device)
}

/// Phase 1: trains the teacher on hard labels (from `resume` when given).
pub fn train_teacher(
    teacher: &mut Model,
    data: &Mnist,
    config: &PhaseConfig,
    resume: Option<PhaseState>,
    on_epoch: &mut OnEpoch,
) -> Result<Vec<EpochRecord>> {
    let phase = Phase::Teacher;
    let member = Member { model: teacher, phase, objective: Objective::Labels, resume };
    train_one(member, None, data, config, on_epoch)
}

/// Phase 2: trains the student on hard labels alone, the no-distillation reference. With a
/// `teacher`, each epoch also reports the student's agreement with it.
pub fn train_baseline(
    student: &mut Model,
    teacher: Option<&Teacher>,
    data: &Mnist,
    config: &PhaseConfig,
    resume: Option<PhaseState>,
    on_epoch: &mut OnEpoch,
) -> Result<Vec<EpochRecord>> {
    let phase = Phase::Baseline;
    let member = Member { model: student, phase, objective: Objective::Labels, resume };
    let targets = teacher.map(|t| TeacherTargets::new(t, data, config.jitter, false));
    train_one(member, targets.as_ref(), data, config, on_epoch)
}

/// Phase 3: distills `teacher` into `student` with
/// [`distillation_loss`](crate::loss::distillation_loss).
pub fn distill(
    student: &mut Model,
    teacher: &Teacher,
    data: &Mnist,
    config: &PhaseConfig,
    distill: &DistillConfig,
    resume: Option<PhaseState>,
    on_epoch: &mut OnEpoch,
) -> Result<Vec<EpochRecord>> {
    let objective = Objective::Distill(*distill);
    let member = Member { model: student, phase: Phase::Student, objective, resume };
    let targets = TeacherTargets::new(teacher, data, config.jitter, true);
    train_one(member, Some(&targets), data, config, on_epoch)
}

/// Trains one model as a group of one; a training loss that stops being finite is an error
/// naming the phase, epoch and step.
fn train_one(
    member: Member,
    teacher: Option<&TeacherTargets>,
    data: &Mnist,
    config: &PhaseConfig,
    on_epoch: &mut OnEpoch,
) -> Result<Vec<EpochRecord>> {
    let mut outcome = train_group(&mut [member], teacher, data, config, on_epoch)?;
    if let Some(divergence) = outcome.diverged[0] {
        bail!(
            "{divergence}; try a lower --lr (or a temperature nearer 1), and if it happens at \
             any --lr, check that the teacher's outputs are finite"
        );
    }
    Ok(outcome.records.remove(0))
}

/// The seed of libtorch's generator at the start of `epoch` of a phase seeded with `seed`:
/// each epoch's batch order, jitter and dropout depend only on these two numbers, so a phase
/// resumed at any epoch draws what an uninterrupted one draws.
pub fn epoch_seed(seed: i64, epoch: i64) -> i64 {
    seed.wrapping_mul(1_000_003).wrapping_add(epoch)
}

/// What a group's training gives: per member, its records and whether it diverged.
pub struct GroupOutcome {
    pub records: Vec<Vec<EpochRecord>>,
    pub diverged: Vec<Option<Divergence>>,
}

/// Where a member's training loss first stopped being finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Divergence {
    pub phase: Phase,
    pub epoch: i64,
    /// The step within the epoch, from 1.
    pub step: i64,
    pub steps_per_epoch: i64,
    /// The epoch's training loss (NaN or infinite).
    pub loss: f64,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{} phase, epoch {}, step {} of {}: the training loss became {}",
            self.phase.name(),
            self.epoch,
            self.step,
            self.steps_per_epoch,
            self.loss
        )
    }
}

/// Trains `members` together: every epoch reseeds libtorch's generator with
/// [`epoch_seed`] and draws one batch order (and, with jitter, one shift per image) that all
/// members share. A group of one gives the same numbers as training that model alone; with
/// several members whose models use dropout, the dropout draws interleave and the numbers
/// differ. Members with a `resume` state continue after its epochs (all members of a group
/// must have done the same number).
///
/// With a `teacher`, each epoch reports every member's agreement with it. Returns the records
/// of each member's phase, resumed epochs included. A member whose training loss stops being
/// finite leaves the group at the end of that epoch (which `on_epoch` does not see) and its
/// [`Divergence`] comes back with the records; the others train on, unchanged, since they see
/// the same batches and draws. Ctrl-C stops inside the epoch with [`Interrupted`], and
/// `on_epoch` never sees that epoch either.
pub fn train_group(
    members: &mut [Member],
    teacher: Option<&TeacherTargets>,
    data: &Mnist,
    config: &PhaseConfig,
    on_epoch: &mut OnEpoch,
) -> Result<GroupOutcome> {
    ensure!(!data.train.is_empty(), "the training set is empty");
    let distills = members.iter().any(|m| matches!(m.objective, Objective::Distill(_)));
    ensure!(teacher.is_some() || !distills, "distillation needs a teacher");
    let done = members[0].resume.as_ref().map_or(0, |r| r.epochs_done);
    ensure!(
        members.iter().all(|m| m.resume.as_ref().map_or(0, |r| r.epochs_done) == done),
        "the members of a training group must resume from the same epoch"
    );

    let mut optimizers = Vec::with_capacity(members.len());
    let mut records = Vec::with_capacity(members.len());
    for member in members.iter_mut() {
        let mut optimizer = Sgd::new(member.model, config.lr, config.momentum, config.weight_decay);
        let resume = member.resume.take();
        if let Some(state) = &resume {
            optimizer.restore(&state.momentum)?;
        }
        optimizers.push(optimizer);
        records.push(resume.map_or_else(Vec::new, |r| r.records));
    }
    let steps_per_epoch = (data.train.len() + config.batch_size - 1) / config.batch_size;

    // members[..live] still train; `slot[i]` is the group position of members[i].
    let mut diverged = vec![None; members.len()];
    let mut live = members.len();
    let mut slot: Vec<usize> = (0..members.len()).collect();
    for epoch in done + 1..=config.epochs {
        if live == 0 {
            break;
        }
        tch::manual_seed(epoch_seed(config.seed, epoch));
        let first_step = (epoch - 1) * steps_per_epoch;
        let results = train_epoch(
            &mut members[..live],
            &mut optimizers[..live],
            teacher,
            data,
            config,
            first_step,
        );
        if results.len() < live {
            let phase = members[0].phase.name();
            return Err(Interrupted { phase, epoch }.into());
        }

        let mut left = vec![];
        for (i, result) in results.into_iter().enumerate() {
            let (k, member) = (slot[i], &members[i]);
            let train_loss = result.loss_sum.double_value(&[]) / data.train.len() as f64;
            if let Some(step) = result.first_bad_step.filter(|_| !train_loss.is_finite()) {
                let phase = member.phase;
                let divergence =
                    Divergence { phase, epoch, step: step + 1, steps_per_epoch, loss: train_loss };
                diverged[k] = Some(divergence);
                left.push(i);
                continue;
            }
            let last_step = first_step + steps_per_epoch - 1;
            let eval = result.eval;
            let record = EpochRecord {
                phase: member.phase,
                epoch,
                train_loss,
                test_loss: eval.loss,
                test_acc: eval.accuracy,
                test_errors: eval.errors,
                agreement: eval.agreement,
                lr: config.lr_at(last_step, steps_per_epoch * config.epochs),
                seconds: result.seconds,
            };
            records[k].push(record);
            on_epoch(&EpochEnd {
                member: k,
                record: records[k].last().expect("just pushed"),
                records: &records[k],
                model: member.model,
                optimizer: &optimizers[i],
            })?;
        }

        // Diverged members move behind the live ones, the highest position first.
        for i in left.into_iter().rev() {
            live -= 1;
            members.swap(i, live);
            optimizers.swap(i, live);
            slot.swap(i, live);
        }
    }
    Ok(GroupOutcome { records, diverged })
}

/// What an epoch gives for one member.
struct EpochResult {
    /// Training loss summed over the samples (a tensor, so the device never waits on the host
    /// inside the epoch).
    loss_sum: Tensor,
    /// The test-set evaluation at the end of the epoch.
    eval: Evaluation,
    /// The member's own steps and evaluation, plus an equal share of its lane's shared work.
    seconds: f64,
    /// The first step (from 0) whose loss was not finite, if any.
    first_bad_step: Option<i64>,
}

/// One pass over the training set for every member, then a test-set evaluation of each.
///
/// Members train in lanes: a lane steps each of its members on every batch of the epoch. On the
/// CPU, when nothing in a step draws random numbers (no dropout, no
/// jitter) and the teacher's logits are cached, the members are spread over one lane per
/// libtorch thread, each lane on a thread of its own running single-threaded kernels: small
/// matrix products use a core better alone than split over two. The lanes' results equal the
/// sequential ones because `kd` runs MKL in strict reproducible mode (see `main.rs`), where a
/// product does not depend on the thread count, and the members' MLPs use no other reduction
/// split by threads. Everything else trains in one lane on the calling thread.
///
/// After Ctrl-C the lanes stop at their next step and give no results, so fewer results than
/// members come back.
fn train_epoch(
    members: &mut [Member],
    optimizers: &mut [Sgd],
    teacher: Option<&TeacherTargets>,
    data: &Mnist,
    config: &PhaseConfig,
    first_step: i64,
) -> Vec<EpochResult> {
    let device = members[0].model.device();
    let distills = members.iter().any(|m| matches!(m.objective, Objective::Distill(_)));
    let batches = epoch_batches(data.train.len(), config.batch_size, device);
    let plan = StepPlan { config, first_step, total_steps: config.epochs * batches.len() as i64 };
    let progress = progress_bar((batches.len() * members.len()) as u64);
    let cached = teacher.and_then(|t| t.cached.as_ref()).filter(|_| distills);
    let ensemble = teacher.map_or(Ensemble::Probabilities, |t| t.teacher.ensemble);
    let lanes = parallel_lanes(members, config, cached.is_some() || !distills);

    let results = if lanes > 1 {
        let per_lane = members.len().div_ceil(lanes);
        let threads = tch::get_num_threads();
        let results = std::thread::scope(|scope| {
            let handles: Vec<_> = members
                .chunks_mut(per_lane)
                .zip(optimizers.chunks_mut(per_lane))
                .map(|(lane, lane_optimizers)| {
                    let own = LaneData::new(data, cached, teacher.map(|t| &t.test_classes));
                    let batches: Vec<Tensor> = batches.iter().map(Tensor::shallow_clone).collect();
                    let progress = progress.clone();
                    scope.spawn(move || {
                        tch::set_num_threads(1);
                        let prepare = |index: &Tensor| own.batch(index);
                        let lane_data = LaneInputs {
                            batches: &batches,
                            prepare: &prepare,
                            test: &own.test,
                            teacher_classes: own.teacher_classes.as_ref(),
                            ensemble,
                            member_major: true,
                        };
                        train_lane(lane, lane_optimizers, &lane_data, &plan, &progress)
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| handle.join().expect("a training lane panicked"))
                .collect()
        });
        tch::set_num_threads(threads);
        results
    } else {
        let prepare = |index: &Tensor| {
            let (images, labels) = data.train.batch(index);
            let images = jitter(&images, config.jitter);
            let teacher =
                teacher.filter(|_| distills).map(|t| t.logits(&images, index, config.jitter > 0));
            Batch { images, labels, teacher }
        };
        let inputs = LaneInputs {
            batches: &batches,
            prepare: &prepare,
            test: &data.test,
            teacher_classes: teacher.map(|t| &t.test_classes),
            ensemble,
            member_major: false,
        };
        train_lane(members, optimizers, &inputs, &plan, &progress)
    };
    progress.finish_and_clear();
    results
}

/// Where the steps of an epoch sit in the phase, for the learning-rate schedule.
#[derive(Clone, Copy)]
struct StepPlan<'a> {
    config: &'a PhaseConfig,
    first_step: i64,
    total_steps: i64,
}

/// The inputs of one training step, shared by every member of a lane.
struct Batch {
    images: Tensor,
    labels: Tensor,
    teacher: Option<Tensor>,
}

/// What a lane reads: the epoch's batches, how to turn one into a step's inputs, and the test
/// set with the teacher's predicted classes on it.
struct LaneInputs<'a> {
    batches: &'a [Tensor],
    prepare: &'a dyn Fn(&Tensor) -> Batch,
    test: &'a Split,
    teacher_classes: Option<&'a Tensor>,
    ensemble: Ensemble,
    /// Each member through all batches in turn, rather than each batch through all members
    /// (only where preparing a batch draws no random numbers).
    member_major: bool,
}

/// A lane thread's own handles on the data and the teacher's outputs (tensors cannot be shared
/// between threads, but shallow clones of them can be moved).
struct LaneData {
    train: Split,
    test: Split,
    teacher_logits: Option<Tensor>,
    teacher_classes: Option<Tensor>,
}

impl LaneData {
    fn new(data: &Mnist, logits: Option<&Tensor>, classes: Option<&Tensor>) -> LaneData {
        LaneData {
            train: data.train.shallow_clone(),
            test: data.test.shallow_clone(),
            teacher_logits: logits.map(Tensor::shallow_clone),
            teacher_classes: classes.map(Tensor::shallow_clone),
        }
    }

    fn batch(&self, index: &Tensor) -> Batch {
        let (images, labels) = self.train.batch(index);
        let teacher = self.teacher_logits.as_ref().map(|t| t.index_select(1, index));
        Batch { images, labels, teacher }
    }
}

/// How many lanes an epoch of `members` may run in parallel (1: sequential). Parallel lanes
/// need the CPU, MLP students without dropout, unjittered inputs and no live teacher forward
/// (`teacher_ready`), so that no step draws from the shared generator.
fn parallel_lanes(members: &[Member], config: &PhaseConfig, teacher_ready: bool) -> usize {
    let deterministic = members.iter().all(|m| {
        let spec = &m.model.spec;
        matches!(spec.arch, Arch::Mlp { .. }) && spec.dropout == 0.0 && spec.input_dropout == 0.0
    });
    let on_cpu = members[0].model.device() == tch::Device::Cpu;
    if !(on_cpu && deterministic && teacher_ready && config.jitter == 0) {
        return 1;
    }
    (tch::get_num_threads().max(1) as usize).min(members.len())
}

/// Walks the batches once, stepping every member of the lane on each, then evaluates each
/// member on the test set.
fn train_lane(
    members: &mut [Member],
    optimizers: &mut [Sgd],
    inputs: &LaneInputs,
    plan: &StepPlan,
    progress: &ProgressBar,
) -> Vec<EpochResult> {
    let mut losses: Vec<Vec<Tensor>> = members.iter().map(|_| vec![]).collect();
    let mut own_seconds = vec![0.0; members.len()];
    let mut shared_seconds = 0.0;
    let config = plan.config;

    let lr = |step: usize| config.lr_at(plan.first_step + step as i64, plan.total_steps);
    if inputs.member_major {
        // One member through every batch, then the next: its weights stay in the cache.
        for (k, (member, optimizer)) in members.iter().zip(optimizers.iter_mut()).enumerate() {
            let start = Instant::now();
            for (step, index) in inputs.batches.iter().enumerate() {
                if crate::interrupt::requested() {
                    break;
                }
                let batch = (inputs.prepare)(index);
                losses[k].push(member_step(member, optimizer, &batch, lr(step), inputs.ensemble));
                progress.inc(1);
            }
            own_seconds[k] += start.elapsed().as_secs_f64();
        }
    } else {
        for (step, index) in inputs.batches.iter().enumerate() {
            if crate::interrupt::requested() {
                break;
            }
            let shared_start = Instant::now();
            let batch = (inputs.prepare)(index);
            shared_seconds += shared_start.elapsed().as_secs_f64();

            for (k, (member, optimizer)) in members.iter().zip(optimizers.iter_mut()).enumerate() {
                let start = Instant::now();
                losses[k].push(member_step(member, optimizer, &batch, lr(step), inputs.ensemble));
                own_seconds[k] += start.elapsed().as_secs_f64();
            }
            progress.inc(members.len() as u64);
        }
    }

    if crate::interrupt::requested() {
        // A cut epoch gives no results: its steps are dropped, as if it had never started.
        return Vec::new();
    }
    let share = shared_seconds / members.len() as f64;
    members
        .iter()
        .zip(losses)
        .zip(own_seconds)
        .map(|((member, losses), own)| {
            let start = Instant::now();
            // Summed on the device, so the host never waits inside the epoch.
            let losses = Tensor::stack(&losses, 0);
            let loss_sum = losses.sum(Kind::Float);
            let bad = losses.isfinite().logical_not();
            let first_bad_step = (bad.any().int64_value(&[]) != 0)
                .then(|| bad.to_kind(Kind::Int).argmax(0, false).int64_value(&[]));
            let eval = evaluate(member.model, inputs.test, inputs.teacher_classes);
            let seconds = own + share + start.elapsed().as_secs_f64();
            EpochResult { loss_sum, eval, seconds, first_bad_step }
        })
        .collect()
}

/// One training step of `member` on `batch` at learning rate `lr`; returns its loss summed over
/// the batch (detached, on the device).
fn member_step(
    member: &Member,
    optimizer: &mut Sgd,
    batch: &Batch,
    lr: f64,
    ensemble: Ensemble,
) -> Tensor {
    optimizer.set_lr(lr);
    let logits = member.model.forward_t(&batch.images, true);
    let teacher = batch.teacher.as_ref();
    let loss = member_loss(member.objective, &logits, teacher, ensemble, &batch.labels);
    optimizer.backward_step(&loss);
    member.model.apply_constraints();
    loss.detach() * batch.labels.size()[0] as f64
}

/// The loss of one member on a batch; `teacher` holds the teacher members' logits
/// `[members, b, classes]`, combined at the member's temperature.
fn member_loss(
    objective: Objective,
    logits: &Tensor,
    teacher: Option<&Tensor>,
    ensemble: Ensemble,
    labels: &Tensor,
) -> Tensor {
    match objective {
        Objective::Labels => cross_entropy(logits, labels),
        Objective::Distill(c) => {
            let teacher =
                teacher.expect("train_group computes teacher logits when a member distills");
            let soft = soft_target_logits(teacher, c.temperature, ensemble);
            distillation_loss(logits, &soft, labels, c.temperature, c.alpha, c.kd_loss)
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

/// `logits` with `shift` added to the logit of `class`: the outputs of the same model with the
/// output bias of that class raised by `shift`.
pub fn shift_class(logits: &Tensor, class: i64, shift: f64) -> Tensor {
    let classes = logits.size()[1];
    let one_hot =
        Tensor::arange(classes, (Kind::Int64, logits.device())).eq(class).to_kind(logits.kind());
    logits + one_hot * shift
}

/// Bias shifts of `class` tried by [`best_class_shift`]: 0 to 10 in steps of 0.1.
const SHIFTS: std::ops::RangeInclusive<i64> = 0..=100;

/// The output bias shift of `class`, from 0 to 10 in steps of 0.1, that makes the fewest
/// errors on the samples with `logits` and `labels` (the smallest such shift), and those errors.
pub fn best_class_shift(logits: &Tensor, labels: &Tensor, class: i64) -> (f64, i64) {
    let errors = |shift: f64| {
        shift_class(logits, class, shift).argmax(-1, false).ne_tensor(labels).sum(Kind::Int64)
    };
    SHIFTS
        .map(|tenths| {
            let shift = tenths as f64 / 10.0;
            (shift, errors(shift).int64_value(&[]))
        })
        .fold((0.0, i64::MAX), |best, (shift, e)| if e < best.1 { (shift, e) } else { best })
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
    use crate::teacher::TeacherNet;
    use std::path::Path;

    /// Regression test for cached teacher logits paired with the wrong samples: the cached
    /// lookup must give the live teacher's logits for a shuffled batch.
    #[test]
    fn cached_teacher_logits_belong_to_the_batch_samples() {
        tch::manual_seed(1);
        let model = Model::new(&"mlp:16".parse().unwrap(), CLASSES, tch::Device::Cpu);
        let teacher = Teacher::single(TeacherNet::from_model(model, Path::new("test")));
        let images = Tensor::rand([50, IMAGE_PIXELS], (Kind::Float, tch::Device::Cpu));
        let test_classes = Tensor::zeros([1], (Kind::Int64, tch::Device::Cpu));
        let cached = TeacherTargets {
            teacher: &teacher,
            cached: Some(teacher.member_logits(&images)),
            test_classes,
        };

        let index = Tensor::from_slice(&[42i64, 3, 17, 9, 30]);
        let batch = images.index_select(0, &index);
        let from_cache = cached.logits(&batch, &index, false);
        let from_teacher = cached.logits(&batch, &index, true);
        assert_eq!(from_cache.size(), [1, 5, CLASSES]);
        let difference = (&from_cache - &from_teacher).abs().max().double_value(&[]);
        assert!(difference < 1e-6, "cached and live logits differ by {difference}");
        let in_order = Tensor::arange(5, (Kind::Int64, tch::Device::Cpu));
        let unshuffled = cached.logits(&batch, &in_order, false);
        assert!((&unshuffled - &from_teacher).abs().max().double_value(&[]) > 1e-3);
    }

    #[test]
    fn the_best_class_shift_is_the_smallest_that_fixes_most_samples() {
        // Three samples of class 2 whose class-2 logit trails the top one by 0.25, 0.75 and
        // 30, and one sample of class 0 that a shift of more than 0.625 turns into a 2. By exact
        // counting: shifts 0 to 0.2 leave 3 errors, 0.3 to 0.6 leave 2, 0.7 leaves 3, 0.8 to 10
        // leave 2; the best is the smallest, 0.3, with 2 errors.
        let logits = Tensor::from_slice(&[
            1.0f32, 0.0, 0.75, //
            1.0, 0.0, 0.25, //
            31.0, 0.0, 1.0, //
            1.0, 0.0, 0.375,
        ])
        .view([4, 3]);
        let labels = Tensor::from_slice(&[2i64, 2, 2, 0]);
        assert_eq!(best_class_shift(&logits, &labels, 2), (0.3, 2));
        let shifted = shift_class(&logits, 2, 1.5);
        let expected = [1.0f32, 0.0, 2.25, 1.0, 0.0, 1.75, 31.0, 0.0, 2.5, 1.0, 0.0, 1.875];
        assert_eq!(Vec::<f32>::try_from(shifted.flatten(0, -1)).unwrap(), expected);
    }

    #[test]
    fn the_cosine_schedule_falls_from_the_peak_to_zero() {
        assert_eq!(Schedule::Cosine.lr(0.1, 0, 100), 0.1);
        assert!((Schedule::Cosine.lr(0.1, 50, 100) - 0.05).abs() < 1e-12);
        assert!(Schedule::Cosine.lr(0.1, 100, 100).abs() < 1e-12);
        assert_eq!(Schedule::Constant.lr(0.1, 70, 100), 0.1);
    }

    #[test]
    fn warm_up_rises_linearly_then_hands_over_to_the_schedule() {
        // 10 epochs of 10 steps, 2 of them warm-up: steps 0 to 19 rise by 0.1 / 20 a step,
        // then the cosine runs over the 80 steps left (by exact arithmetic: its middle, step
        // 20 + 40, is half the peak).
        let config = PhaseConfig {
            epochs: 10,
            batch_size: 1,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: Schedule::Cosine,
            warmup_epochs: 2,
            jitter: 0,
            seed: 0,
        };
        assert!((config.lr_at(0, 100) - 0.005).abs() < 1e-15);
        assert!((config.lr_at(9, 100) - 0.05).abs() < 1e-15);
        assert_eq!(config.lr_at(19, 100), 0.1);
        assert_eq!(config.lr_at(20, 100), 0.1);
        assert!((config.lr_at(60, 100) - 0.05).abs() < 1e-12);
        assert!(config.lr_at(100, 100).abs() < 1e-12);
        let plain = PhaseConfig { warmup_epochs: 0, ..config };
        assert_eq!(plain.lr_at(60, 100), Schedule::Cosine.lr(0.1, 60, 100));
    }
}
