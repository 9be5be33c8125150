//! The command line: clap structures (their doc comments are the `--help` text) and the
//! conversion of raw options into validated configurations. Range checks live here and only
//! here, in the value parsers, so a bad value is reported by clap with the option's name.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use tch::{Cuda, Device};

use crate::loss::KdLoss;
use crate::models::ModelSpec;
use crate::teacher::{Ensemble, InputLayout};
use crate::train::{DistillConfig, PhaseConfig, Schedule};

/// Knowledge distillation: train a teacher, distill it into a small student, export the student.
#[derive(Debug, Parser)]
#[command(name = "kd", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job: teacher pretraining, student baseline, student distillation, then export
    /// of the student as TorchScript; prints a table of the three.
    Run(RunArgs),
    /// Train a teacher alone; writes teacher.safetensors in the run folder.
    Teacher(TeacherArgs),
    /// Distill a trained teacher into a new student; writes student.safetensors and student.pt.
    Distill(DistillArgs),
    /// Evaluate a checkpoint (.safetensors) or TorchScript file (.pt) on the test set.
    Eval(EvalArgs),
    /// Export a checkpoint as TorchScript (.pt) with a JSON card beside it.
    Export(ExportArgs),
    /// List the presets of `kd run --preset`: what each reproduces, its command, the paper's
    /// numbers and ours, and how long it takes.
    Presets,
    /// Distill one teacher at every combination of temperatures, alphas and seeds (plus a
    /// baseline per seed), sharing the teacher's work; resumable and splittable into shards.
    Sweep(SweepArgs),
}

/// Options every training command takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Folder with the four MNIST IDX files (raw or .gz, either spelling).
    #[arg(long, value_name = "DIR", default_value = "data/mnist")]
    pub data: PathBuf,
    /// Run folder for config, CSVs and checkpoints [default: runs/<command>-<date>-<time>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Overwrite a run folder that already holds a run, finished or not.
    #[arg(long)]
    pub force: bool,
    /// Continue the killed run in DIR from its last saved epoch, with the options saved there
    /// (options given again must not differ).
    #[arg(long, value_name = "DIR", conflicts_with = "force")]
    pub resume: Option<PathBuf>,
    /// auto (CUDA when available, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: Device,
    /// Seed of every random draw (initial weights, batch order, dropout, jitter).
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Train on the first N training samples only.
    #[arg(long, value_name = "N", value_parser = count)]
    pub train_limit: Option<i64>,
    /// No progress bars and no per-epoch lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Do not draw the PNG plots (scripts/plot.py) at the end.
    #[arg(long)]
    pub no_plot: bool,
}

/// Optimiser options, shared by all phases of a command.
#[derive(Debug, Args)]
pub struct OptimArgs {
    /// Samples per training step.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = count)]
    pub batch_size: i64,
    /// Peak learning rate of SGD.
    #[arg(long, value_name = "X", default_value_t = 0.05, value_parser = positive)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, value_name = "X", default_value_t = 0.9, value_parser = unit_interval)]
    pub momentum: f64,
    /// L2 weight decay.
    #[arg(long, value_name = "X", default_value_t = 0.0, value_parser = non_negative)]
    pub weight_decay: f64,
    /// Learning-rate schedule over each phase.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    /// Epochs at the start of each phase over which the learning rate rises linearly to its
    /// peak; the schedule runs over the rest.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = non_negative_count)]
    pub warmup_epochs: i64,
}

/// Distillation options.
#[derive(Debug, Args)]
pub struct KdArgs {
    /// Temperature T in [0.001, 1000] that softens teacher and student logits (softmax of
    /// logits / T).
    #[arg(long, value_name = "T", default_value_t = 4.0, value_parser = temperature)]
    pub temperature: f64,
    /// Weight of the soft (teacher) term in [0, 1]; the hard-label term gets 1 - alpha.
    #[arg(long, value_name = "A", default_value_t = 0.9, value_parser = unit_interval)]
    pub alpha: f64,
    /// Soft term: kl (KL divergence) or soft-ce (cross-entropy with the teacher's distribution).
    #[arg(long, value_name = "LOSS", default_value = "kl", value_parser = parse_kd_loss)]
    pub kd_loss: KdLoss,
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true, args_override_self = true)]
pub struct RunArgs {
    /// A recipe from `kd presets` (or a preset .toml file): its options come first, so options
    /// given here override them.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[command(flatten)]
    pub kd: KdArgs,
    /// Teacher model spec (mlp:SIZES or cnn:C1xC2, options after a colon).
    #[arg(long, value_name = "SPEC", default_value = "mlp:1200x1200:dropout=0.3")]
    pub teacher_model: ModelSpec,
    /// Student model spec.
    #[arg(long, value_name = "SPEC", default_value = "mlp:800x800")]
    pub student_model: ModelSpec,
    /// Epochs of teacher pretraining.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = count)]
    pub teacher_epochs: i64,
    /// Epochs of the student baseline and of distillation (each).
    #[arg(long, value_name = "N", default_value_t = 6, value_parser = count)]
    pub student_epochs: i64,
    /// Random shift of up to PIXELS of the teacher's training images.
    #[arg(long, value_name = "PIXELS", default_value_t = 2, value_parser = pixels)]
    pub jitter: i64,
    /// Random shift of up to PIXELS of the students' training images (0 lets the teacher's
    /// training-set logits be computed once and reused).
    #[arg(long, value_name = "PIXELS", default_value_t = 0, value_parser = pixels)]
    pub student_jitter: i64,
    /// Peak learning rate of the teacher's SGD [default: --lr].
    #[arg(long, value_name = "X", value_parser = positive)]
    pub teacher_lr: Option<f64>,
    /// Warm-up epochs of the teacher's learning rate [default: --warmup-epochs].
    #[arg(long, value_name = "N", value_parser = non_negative_count)]
    pub teacher_warmup_epochs: Option<i64>,
    /// Peak learning rate of the baseline student's SGD [default: --lr].
    #[arg(long, value_name = "X", value_parser = positive)]
    pub baseline_lr: Option<f64>,
    /// Skip teacher pretraining and use this kd checkpoint (a teacher.safetensors) instead.
    #[arg(long, value_name = "PATH")]
    pub teacher_from: Option<PathBuf>,
    /// Skip the student baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Leave every training sample of this class out of the students' training set (the
    /// teacher still sees them).
    #[arg(long, value_name = "CLASS", value_parser = class)]
    pub omit_class: Option<i64>,
    /// Also report the distilled student with X added to the output bias of CLASS.
    #[arg(long, value_name = "CLASS:X", value_parser = parse_bias_shift)]
    pub bias_shift: Option<(i64, f64)>,
    /// Keep the last N training samples out of the students' training set, and report the
    /// bias shift of the --bias-shift class that makes the fewest errors on them.
    #[arg(long, value_name = "N", value_parser = count, requires = "bias_shift")]
    pub holdout: Option<i64>,
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct TeacherArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub optim: OptimArgs,
    /// Teacher model spec.
    #[arg(long, value_name = "SPEC", default_value = "mlp:1200x1200:dropout=0.3")]
    pub teacher_model: ModelSpec,
    /// Training epochs.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = count)]
    pub epochs: i64,
    /// Random shift of up to PIXELS of the training images.
    #[arg(long, value_name = "PIXELS", default_value_t = 2, value_parser = pixels)]
    pub jitter: i64,
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct DistillArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[command(flatten)]
    pub kd: KdArgs,
    #[command(flatten)]
    pub teacher: TeacherSource,
    /// Student model spec.
    #[arg(long, value_name = "SPEC", default_value = "mlp:800x800")]
    pub student_model: ModelSpec,
    /// Distillation epochs.
    #[arg(long, value_name = "N", default_value_t = 6, value_parser = count)]
    pub epochs: i64,
    /// Random shift of up to PIXELS of the student's training images.
    #[arg(long, value_name = "PIXELS", default_value_t = 0, value_parser = pixels)]
    pub jitter: i64,
    /// Also train the same student without the teacher, as a reference.
    #[arg(long)]
    pub baseline: bool,
}

/// Where the teacher of `kd distill` and `kd sweep` comes from.
#[derive(Debug, Args)]
pub struct TeacherSource {
    /// Teacher: a kd checkpoint (.safetensors) or a TorchScript file saved in PyTorch from
    /// torch.jit.script or torch.jit.trace. Repeat the option for an ensemble.
    #[arg(long = "teacher", value_name = "PATH", required_unless_present = "resume")]
    pub paths: Vec<PathBuf>,
    /// Teacher spec, needed only for kd checkpoints that do not record theirs.
    #[arg(long, value_name = "SPEC")]
    pub teacher_model: Option<ModelSpec>,
    /// Input layout of TorchScript teachers: flat [n, 784], image [n, 1, 28, 28], or auto (try
    /// both).
    #[arg(long, value_name = "LAYOUT", value_enum, default_value = "auto")]
    pub teacher_input: InputLayout,
    /// How an ensemble's members make one soft target: the mean of their softened
    /// probabilities (as in Hinton et al.), or the softmax of their mean logits.
    #[arg(long, value_name = "HOW", value_enum, default_value = "probabilities")]
    pub ensemble: Ensemble,
}

impl TeacherSource {
    /// The one teacher file `path`, of any kind kd reads, with its layout detected.
    pub fn one(path: &std::path::Path) -> TeacherSource {
        TeacherSource {
            paths: vec![path.to_path_buf()],
            teacher_model: None,
            teacher_input: InputLayout::Auto,
            ensemble: Ensemble::Probabilities,
        }
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A kd checkpoint (.safetensors) or a TorchScript file (.pt).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Model spec, needed only for checkpoints that do not record theirs.
    #[arg(long, value_name = "SPEC")]
    pub model_spec: Option<ModelSpec>,
    /// Folder with the MNIST IDX files.
    #[arg(long, value_name = "DIR", default_value = "data/mnist")]
    pub data: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: Device,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The kd checkpoint (.safetensors) to export.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Folder for <name>.pt and <name>.json [default: the checkpoint's folder].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Model spec, needed only for checkpoints that do not record theirs.
    #[arg(long, value_name = "SPEC")]
    pub model_spec: Option<ModelSpec>,
    /// Overwrite an existing export of the same name.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
#[command(
    allow_negative_numbers = true,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct SweepArgs {
    #[command(subcommand)]
    pub action: Option<SweepAction>,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[command(flatten)]
    pub teacher: TeacherSource,
    /// Student model spec.
    #[arg(long, value_name = "SPEC", default_value = "mlp:800x800")]
    pub student_model: ModelSpec,
    /// Temperatures in [0.001, 1000], comma-separated.
    #[arg(long, value_name = "T,...", value_delimiter = ',', value_parser = temperature)]
    #[arg(default_value = "1,2,4,8,20")]
    pub temperature: Vec<f64>,
    /// Alphas (weights of the soft term), comma-separated.
    #[arg(long, value_name = "A,...", value_delimiter = ',', value_parser = unit_interval)]
    #[arg(default_value = "0.1,0.5,0.9")]
    pub alpha: Vec<f64>,
    /// Seeds, comma-separated [default: the value of --seed].
    #[arg(
        long,
        value_name = "S,...",
        value_delimiter = ',',
        allow_negative_numbers = true,
        conflicts_with = "seed"
    )]
    pub seeds: Vec<i64>,
    /// Soft term: kl or soft-ce.
    #[arg(long, value_name = "LOSS", default_value = "kl", value_parser = parse_kd_loss)]
    pub kd_loss: KdLoss,
    /// Epochs per point.
    #[arg(long, value_name = "N", default_value_t = 6, value_parser = count)]
    pub epochs: i64,
    /// Random shift of up to PIXELS of the students' training images.
    #[arg(long, value_name = "PIXELS", default_value_t = 0, value_parser = pixels)]
    pub jitter: i64,
    /// Skip the baseline (the student trained on labels alone) of each seed.
    #[arg(long)]
    pub no_baseline: bool,
    /// Run only the I-th of N disjoint parts of the grid (I from 1 to N).
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<[usize; 2]>,
    /// Most points trained together in one pass over the data.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = count)]
    pub group_size: i64,
}

#[derive(Debug, Subcommand)]
pub enum SweepAction {
    /// Join the shard folders of one sweep into one sweep folder.
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The shard folders (each written by kd sweep --shard I/N).
    #[arg(value_name = "PART_DIR", required = true)]
    pub parts: Vec<PathBuf>,
    /// The merged sweep folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace what --out already holds.
    #[arg(long)]
    pub force: bool,
    /// Do not draw the PNG plots at the end.
    #[arg(long)]
    pub no_plot: bool,
}

impl Command {
    /// The options shared by training commands, for those that take them.
    pub fn common(&self) -> Option<&CommonArgs> {
        match self {
            Command::Run(args) => Some(&args.common),
            Command::Teacher(args) => Some(&args.common),
            Command::Distill(args) => Some(&args.common),
            Command::Sweep(args) => Some(&args.common),
            Command::Eval(_) | Command::Export(_) | Command::Presets => None,
        }
    }

    /// The options every training command shares, to change them.
    pub fn common_mut(&mut self) -> Option<&mut CommonArgs> {
        match self {
            Command::Run(args) => Some(&mut args.common),
            Command::Teacher(args) => Some(&mut args.common),
            Command::Distill(args) => Some(&mut args.common),
            Command::Sweep(args) => Some(&mut args.common),
            Command::Eval(_) | Command::Export(_) | Command::Presets => None,
        }
    }

    /// The subcommand's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Run(_) => "run",
            Command::Teacher(_) => "teacher",
            Command::Distill(_) => "distill",
            Command::Sweep(_) => "sweep",
            Command::Eval(_) => "eval",
            Command::Export(_) => "export",
            Command::Presets => "presets",
        }
    }
}

impl OptimArgs {
    /// The phase configuration these options give, for `epochs` epochs with `jitter` pixels.
    /// A warm-up must leave at least one epoch of the phase to the schedule.
    pub fn phase(&self, epochs: i64, jitter: i64, seed: i64) -> anyhow::Result<PhaseConfig> {
        self.phase_with(epochs, jitter, seed, self.lr, ("--warmup-epochs", self.warmup_epochs))
    }

    /// [`OptimArgs::phase`] with its own peak learning rate and warm-up, the warm-up named by
    /// the option that gave it (for the error when it is too long).
    pub fn phase_with(
        &self,
        epochs: i64,
        jitter: i64,
        seed: i64,
        lr: f64,
        (option, warmup_epochs): (&str, i64),
    ) -> anyhow::Result<PhaseConfig> {
        anyhow::ensure!(
            warmup_epochs == 0 || warmup_epochs < epochs,
            "{option} {warmup_epochs} leaves nothing of a {epochs}-epoch phase to the schedule; \
             give fewer warm-up epochs than the phase has"
        );
        Ok(PhaseConfig {
            epochs,
            batch_size: self.batch_size,
            lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            schedule: self.schedule,
            warmup_epochs,
            jitter,
            seed,
        })
    }
}

impl KdArgs {
    pub fn config(&self) -> DistillConfig {
        DistillConfig { temperature: self.temperature, alpha: self.alpha, kd_loss: self.kd_loss }
    }
}

/// `auto`, `cpu`, `cuda` or `cuda:N`; CUDA must be present.
pub fn parse_device(text: &str) -> Result<Device> {
    let cuda = |index: usize| {
        let count = Cuda::device_count() as usize;
        if index >= count {
            bail!("CUDA device {index} is not available ({count} CUDA devices found)");
        }
        Ok(Device::Cuda(index))
    };
    match text {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match text.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => cuda(index),
            _ => bail!("expected auto, cpu, cuda or cuda:N"),
        },
    }
}

/// A class index of MNIST, 0 to 9.
fn class(text: &str) -> Result<i64> {
    match text.parse::<i64>() {
        Ok(c) if (0..crate::data::CLASSES).contains(&c) => Ok(c),
        _ => bail!("'{text}' is not a class from 0 to 9"),
    }
}

/// `CLASS:X`: a class and the finite amount added to its output bias.
fn parse_bias_shift(text: &str) -> Result<(i64, f64)> {
    let Some((c, x)) = text.split_once(':') else {
        bail!("expected CLASS:X, like 3:3.5");
    };
    Ok((class(c)?, number(x)?))
}

/// `I/N` with 1 <= I <= N.
fn parse_shard(text: &str) -> Result<[usize; 2]> {
    let parsed = text.split_once('/').map(|(i, n)| (i.parse::<usize>(), n.parse::<usize>()));
    match parsed {
        Some((Ok(index), Ok(count))) if (1..=count).contains(&index) => Ok([index, count]),
        _ => bail!("expected I/N with 1 <= I <= N, like 2/4"),
    }
}

fn parse_kd_loss(text: &str) -> Result<KdLoss> {
    text.parse()
}

/// A whole number of at least 1 (epochs, batch size, samples, group size).
fn count(text: &str) -> Result<i64> {
    match text.parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => bail!("'{text}' is not a whole number of at least 1"),
    }
}

/// A whole number of at least 0.
fn non_negative_count(text: &str) -> Result<i64> {
    match text.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => bail!("'{text}' is not a whole number of at least 0"),
    }
}

/// A jitter: a whole number of pixels from 0 to 8.
fn pixels(text: &str) -> Result<i64> {
    match text.parse::<i64>() {
        Ok(n) if (0..=8).contains(&n) => Ok(n),
        _ => bail!("'{text}' is not a whole number of pixels from 0 to 8"),
    }
}

fn number(text: &str) -> Result<f64> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => bail!("'{text}' is not a finite number"),
    }
}

/// A temperature: within [0.001, 1000], where float32 logits divided by it stay finite.
fn temperature(text: &str) -> Result<f64> {
    let t = number(text)?;
    if !(1e-3..=1e3).contains(&t) {
        bail!("must be between 0.001 and 1000 (beyond, softened logits overflow float32)");
    }
    Ok(t)
}

fn positive(text: &str) -> Result<f64> {
    let x = number(text)?;
    if x <= 0.0 {
        bail!("must be greater than 0");
    }
    Ok(x)
}

fn non_negative(text: &str) -> Result<f64> {
    let x = number(text)?;
    if x < 0.0 {
        bail!("must not be negative");
    }
    Ok(x)
}

fn unit_interval(text: &str) -> Result<f64> {
    let x = number(text)?;
    if !(0.0..=1.0).contains(&x) {
        bail!("must be between 0 and 1");
    }
    Ok(x)
}
