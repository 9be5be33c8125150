//! The subcommands: each turns validated options into data, models and phases, and leaves its
//! results in a run folder (see [`crate::report`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use crate::checkpoint;
use crate::checkpoint::PhaseState;
use crate::cli::{
    CommonArgs, DistillArgs, EvalArgs, ExportArgs, RunArgs, SweepAction, SweepArgs, TeacherArgs,
    TeacherSource,
};
use crate::data::{CLASSES, IMAGE_PIXELS, Mnist, Split, load_mnist, load_test_split};
use crate::export::export_torchscript;
use crate::models::{Model, ModelSpec};
use crate::preset;
use crate::report::{RunDir, SummaryRow, lock_folder, state_file, status, table, teacher_rows};
use crate::resume::{self, save_command};
use crate::sweep::{self, SweepConfig, TeacherFile};
use crate::teacher::{Ensemble, InputLayout, Teacher, TeacherNet};
use crate::train::{
    DistillConfig, EpochRecord, OnEpoch, Phase, PhaseConfig, best_class_shift, distill,
    evaluation_from_logits, predict, seeded_model, shift_class, train_baseline, train_teacher,
};

/// Everything a run folder's `config.json` records.
#[derive(Debug, Default, Serialize)]
struct RunConfig {
    kd_version: String,
    command: String,
    data: PathBuf,
    device: String,
    train_samples: i64,
    seed: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    preset: Option<String>,
    teacher_model: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    teacher_checkpoints: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ensemble: Option<Ensemble>,
    student_model: Option<String>,
    /// The students' training samples, where `--omit-class` or `--holdout` leave some out.
    #[serde(skip_serializing_if = "Option::is_none")]
    student_train_samples: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    omit_class: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    holdout: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bias_shift: Option<(i64, f64)>,
    teacher: Option<PhaseConfig>,
    /// The baseline's settings, where `--baseline-lr` makes them differ from the student's.
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline: Option<PhaseConfig>,
    student: Option<PhaseConfig>,
    distill: Option<DistillConfig>,
}

impl RunConfig {
    /// The settings every command shares, as resolved (the training samples actually used).
    fn new(command: &str, common: &CommonArgs, data: &Mnist) -> RunConfig {
        RunConfig {
            kd_version: env!("CARGO_PKG_VERSION").to_string(),
            command: command.to_string(),
            data: common.data.clone(),
            device: device_name(common.device),
            train_samples: data.train.len(),
            seed: common.seed,
            ..Default::default()
        }
    }
}

/// Where the teacher of `kd run` comes from.
enum TeacherPlan {
    /// `--teacher-from`, loaded before the run folder is touched (a bad file leaves it as it
    /// was); no teacher trains, so the teacher's schedule options are not used.
    Given(Teacher),
    /// Trained in the run with this schedule.
    Train(PhaseConfig),
}

/// Options of `kd run` that describe the teacher it trains: its model and how it trains.
const TEACHER_TRAINING: [&str; 5] =
    ["--teacher-model", "--teacher-epochs", "--teacher-lr", "--teacher-warmup-epochs", "--jitter"];

fn teacher_plan(args: &RunArgs, data: &Mnist) -> Result<TeacherPlan> {
    if let Some(path) = &args.teacher_from {
        // A preset's teacher options are fine (they are its recipe); the user's are a mistake.
        let given: Vec<String> = std::env::args().skip(1).collect();
        let unused: Vec<&str> = TEACHER_TRAINING
            .into_iter()
            .filter(|option| given.iter().any(|a| a.split('=').next() == Some(option)))
            .collect();
        ensure!(
            unused.is_empty(),
            "--teacher-from gives a trained teacher (its file says what model it is), so the \
             options that describe a teacher to train cannot apply: leave {} out",
            unused.join(", ")
        );
        let teacher = load_teacher(&TeacherSource::one(path), &args.common, data)?;
        return Ok(TeacherPlan::Given(teacher));
    }
    let warmup = match args.teacher_warmup_epochs {
        Some(epochs) => ("--teacher-warmup-epochs", epochs),
        None => ("--warmup-epochs", args.optim.warmup_epochs),
    };
    let lr = args.teacher_lr.unwrap_or(args.optim.lr);
    let config = args
        .optim
        .phase_with(args.teacher_epochs, args.jitter, args.common.seed, lr, warmup)
        .map_err(|e| under_preset(e, args))?;
    Ok(TeacherPlan::Train(config))
}

/// An error about the options of `kd run`, saying where they partly came from when a preset
/// gave some.
fn under_preset(error: anyhow::Error, args: &RunArgs) -> anyhow::Error {
    match &args.preset {
        Some(name) => error.context(preset::under(name)),
        None => error,
    }
}

/// `kd run`: teacher (trained, or `--teacher-from`), baseline and distilled student, then the
/// student's TorchScript export; with `--preset`, also the comparison with the paper.
pub fn run(args: &RunArgs) -> Result<()> {
    let common = &args.common;
    let preset = args.preset.as_deref().map(preset::find).transpose()?;
    let data = load_data(common)?;
    let (students, held_out) = student_data(&data, args).map_err(|e| under_preset(e, args))?;
    let student_config = args
        .optim
        .phase(args.student_epochs, args.student_jitter, common.seed)
        .map_err(|e| under_preset(e, args))?;
    let baseline_lr = args.baseline_lr.unwrap_or(student_config.lr);
    let baseline_config = PhaseConfig { lr: baseline_lr, ..student_config.clone() };
    let kd = args.kd.config();
    let plan = teacher_plan(args, &data)?;
    let teacher_model = match &plan {
        TeacherPlan::Given(teacher) => teacher.description(),
        TeacherPlan::Train(_) => args.teacher_model.to_string(),
    };
    if teacher_model != args.teacher_model.to_string() {
        status(&format!("teacher: {teacher_model} from --teacher-from (not --teacher-model)"));
    }
    let config = RunConfig {
        preset: args.preset.clone(),
        teacher_model,
        teacher_checkpoints: args.teacher_from.iter().cloned().collect(),
        student_model: Some(args.student_model.to_string()),
        student_train_samples: (students.train.len() < data.train.len())
            .then_some(students.train.len()),
        omit_class: args.omit_class,
        holdout: args.holdout,
        bias_shift: args.bias_shift,
        teacher: match &plan {
            TeacherPlan::Given(_) => None,
            TeacherPlan::Train(config) => Some(config.clone()),
        },
        baseline: (baseline_config != student_config).then(|| baseline_config.clone()),
        student: Some(student_config.clone()),
        distill: Some(kd),
        ..RunConfig::new("run", common, &data)
    };
    let phases: Vec<Phase> = [
        (Phase::Teacher, args.teacher_from.is_none()),
        (Phase::Baseline, !args.no_baseline),
        (Phase::Student, true),
    ]
    .into_iter()
    .filter_map(|(phase, runs)| runs.then_some(phase))
    .collect();
    let mut dir = open_run(common, "run", &config, &phases)?;

    let test = &data.test;
    let on_omitted =
        |logits: &Tensor| args.omit_class.map(|c| errors_on_class(logits, &test.labels, c));
    let (teacher, mut rows) = match plan {
        TeacherPlan::Given(teacher) => {
            let rows = teacher_rows(&teacher, &data.test);
            (teacher, rows)
        }
        TeacherPlan::Train(teacher_config) => {
            let mut teacher = new_model(&args.teacher_model, common, Phase::Teacher);
            let records =
                run_phase(&mut dir, &mut teacher, Phase::Teacher, |model, resume, on_epoch| {
                    train_teacher(model, &data, &teacher_config, resume, on_epoch)
                })?;
            let path = dir.file("teacher.safetensors");
            checkpoint::save(&teacher, &path)?;
            let row = summary_row(Phase::Teacher, &teacher, &records, None);
            (Teacher::single(TeacherNet::from_model(teacher, &path)), vec![row])
        }
    };
    // Test logits of the teacher and the baseline are computed only when a class is omitted.
    rows[0].omitted_errors =
        args.omit_class.and_then(|_| on_omitted(&teacher.logits(&test.images)));

    if !args.no_baseline {
        let mut baseline = new_model(&args.student_model, common, Phase::Baseline);
        let records =
            run_phase(&mut dir, &mut baseline, Phase::Baseline, |model, resume, on_epoch| {
                train_baseline(model, Some(&teacher), &students, &baseline_config, resume, on_epoch)
            })?;
        checkpoint::save(&baseline, &dir.file("baseline.safetensors"))?;
        rows.push(SummaryRow {
            omitted_errors: args
                .omit_class
                .and_then(|_| on_omitted(&predict(&baseline, &test.images))),
            ..summary_row(Phase::Baseline, &baseline, &records, None)
        });
    }

    let mut student = new_model(&args.student_model, common, Phase::Student);
    let records = run_phase(&mut dir, &mut student, Phase::Student, |model, resume, on_epoch| {
        distill(model, &teacher, &students, &student_config, &kd, resume, on_epoch)
    })?;
    let logits = predict(&student, &test.images);
    let row = SummaryRow {
        omitted_errors: on_omitted(&logits),
        ..summary_row(Phase::Student, &student, &records, Some(&kd))
    };
    let shifted = args.bias_shift.map_or_else(Vec::new, |(class, shift)| {
        let held_out = held_out.as_ref().map(|split| (predict(&student, &split.images), split));
        shifted_rows(&row, &logits, test, (class, shift), held_out, &on_omitted)
    });
    rows.push(row);
    rows.extend(shifted);
    save_student(&mut student, &dir)?;

    if let Some(preset) = &preset {
        preset::attach_paper(&mut rows, preset);
    }
    finish(&dir, &rows, common)?;
    if let Some(preset) = &preset {
        let changes = preset::recipe_changes(&resume::saved_argv(&dir.path)?, preset);
        print!("{}", preset::comparison(&rows, preset, &changes));
    }
    Ok(())
}

/// The students' training set of `kd run` (the training set less its last `--holdout` samples
/// and less the `--omit-class` samples), and the held-out samples.
fn student_data(data: &Mnist, args: &RunArgs) -> Result<(Mnist, Option<Split>)> {
    let n = data.train.len();
    let holdout = args.holdout.unwrap_or(0);
    ensure!(
        holdout < n,
        "--holdout {holdout} would leave no training sample for the students (the training set \
         has {n})"
    );
    let mut train = data.train.take(n - holdout);
    if let Some(class) = args.omit_class {
        train = train.without_class(class);
        ensure!(!train.is_empty(), "the students' training set holds only class {class}");
    }
    if train.len() < n {
        let omitted = args.omit_class.map_or(String::new(), |c| format!(", without class {c}"));
        let held = args.holdout.map_or(String::new(), |h| format!(", last {h} held out"));
        status(&format!("students: {} training images{omitted}{held}", train.len()));
    }
    let held_out = args.holdout.map(|h| data.train.last(h));
    Ok((Mnist { train, test: data.test.shallow_clone() }, held_out))
}

/// The distilled student's summary rows (`row`, its test `logits`) with the output bias of
/// `class` shifted: by `shift` and, given held-out samples (with the student's logits for them),
/// by the amount that makes the fewest errors on them.
fn shifted_rows(
    row: &SummaryRow,
    logits: &Tensor,
    test: &Split,
    (class, shift): (i64, f64),
    held_out: Option<(Tensor, &Split)>,
    on_omitted: &dyn Fn(&Tensor) -> Option<i64>,
) -> Vec<SummaryRow> {
    let shifted_row = |phase: &str, shift: f64, how: &str| {
        let logits = shift_class(logits, class, shift);
        let eval = evaluation_from_logits(&logits, &test.labels, None);
        SummaryRow {
            phase: phase.to_string(),
            model: format!("{}, class {class} bias {shift:+}{how}", row.model),
            test_acc: eval.accuracy,
            test_errors: eval.errors,
            agreement: None,
            omitted_errors: on_omitted(&logits),
            ..row.clone()
        }
    };
    let mut rows = vec![shifted_row("shifted", shift, "")];
    if let Some((held_logits, held_out)) = held_out {
        let (best, errors) = best_class_shift(&held_logits, &held_out.labels, class);
        status(&format!(
            "class {class}: a bias shift of {best:+} makes the fewest errors ({errors}) on the {} \
             held-out samples",
            held_out.len()
        ));
        rows.push(shifted_row("best-shift", best, " (best on the held-out samples)"));
    }
    rows
}

/// Test errors on `class` of the model that gave `logits` for the samples with `labels`.
fn errors_on_class(logits: &Tensor, labels: &Tensor, class: i64) -> i64 {
    evaluation_from_logits(logits, labels, None).class_errors[class as usize]
}

/// `kd teacher`: teacher pretraining alone.
pub fn teacher(args: &TeacherArgs) -> Result<()> {
    let common = &args.common;
    let data = load_data(common)?;
    let config = args.optim.phase(args.epochs, args.jitter, common.seed)?;
    let run_config = RunConfig {
        teacher_model: args.teacher_model.to_string(),
        teacher: Some(config.clone()),
        ..RunConfig::new("teacher", common, &data)
    };
    let mut dir = open_run(common, "teacher", &run_config, &[Phase::Teacher])?;

    let mut teacher = new_model(&args.teacher_model, common, Phase::Teacher);
    let records = run_phase(&mut dir, &mut teacher, Phase::Teacher, |model, resume, on_epoch| {
        train_teacher(model, &data, &config, resume, on_epoch)
    })?;
    checkpoint::save(&teacher, &dir.file("teacher.safetensors"))?;
    finish(&dir, &[summary_row(Phase::Teacher, &teacher, &records, None)], common)
}

/// `kd distill`: a trained teacher into a new student (and, with `--baseline`, the same student
/// trained without the teacher).
pub fn distill_command(args: &DistillArgs) -> Result<()> {
    let common = &args.common;
    let data = load_data(common)?;
    let teacher = load_teacher(&args.teacher, common, &data)?;
    let config = args.optim.phase(args.epochs, args.jitter, common.seed)?;
    let kd = args.kd.config();
    let run_config = RunConfig {
        teacher_model: teacher.description(),
        teacher_checkpoints: args.teacher.paths.clone(),
        ensemble: (teacher.members.len() > 1).then_some(teacher.ensemble),
        student_model: Some(args.student_model.to_string()),
        student: Some(config.clone()),
        distill: Some(kd),
        ..RunConfig::new("distill", common, &data)
    };
    let mut dir = open_run(common, "distill", &run_config, &[Phase::Baseline, Phase::Student])?;
    let mut rows = teacher_rows(&teacher, &data.test);

    if args.baseline {
        let mut baseline = new_model(&args.student_model, common, Phase::Baseline);
        let records = run_phase(&mut dir, &mut baseline, Phase::Baseline, |model, resume, cb| {
            train_baseline(model, Some(&teacher), &data, &config, resume, cb)
        })?;
        checkpoint::save(&baseline, &dir.file("baseline.safetensors"))?;
        rows.push(summary_row(Phase::Baseline, &baseline, &records, None));
    }

    let mut student = new_model(&args.student_model, common, Phase::Student);
    let records = run_phase(&mut dir, &mut student, Phase::Student, |model, resume, on_epoch| {
        distill(model, &teacher, &data, &config, &kd, resume, on_epoch)
    })?;
    rows.push(summary_row(Phase::Student, &student, &records, Some(&kd)));
    save_student(&mut student, &dir)?;
    finish(&dir, &rows, common)
}

/// `kd sweep` (and `kd sweep merge`): see [`crate::sweep`].
pub fn sweep_command(args: &SweepArgs) -> Result<()> {
    if let Some(SweepAction::Merge(merge)) = &args.action {
        sweep::merge(&merge.parts, &merge.out, merge.force)?;
        if !merge.no_plot {
            plot(&merge.out);
        }
        return Ok(());
    }
    let common = &args.common;
    let seeds = if args.seeds.is_empty() { vec![common.seed] } else { args.seeds.clone() };
    no_repeats("--temperature", &args.temperature)?;
    no_repeats("--alpha", &args.alpha)?;
    no_repeats("--seeds", &seeds)?;
    let data = load_data(common)?;
    let teacher = load_teacher(&args.teacher, common, &data)?;
    let teachers = teacher
        .members
        .iter()
        .map(|m| {
            let bytes = std::fs::read(&m.source)
                .with_context(|| format!("cannot read {}", m.source.display()))?;
            Ok(TeacherFile {
                path: m.source.clone(),
                model: m.description.clone(),
                sha256: Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let config = SweepConfig {
        kd_version: env!("CARGO_PKG_VERSION").to_string(),
        data: common.data.clone(),
        device: device_name(common.device),
        train_samples: data.train.len(),
        teachers,
        ensemble: teacher.ensemble,
        student_model: args.student_model.to_string(),
        student: args.optim.phase(args.epochs, args.jitter, common.seed)?,
        kd_loss: args.kd_loss,
        temperatures: args.temperature.clone(),
        alphas: args.alpha.clone(),
        seeds,
        baseline: !args.no_baseline,
        shard: args.shard,
    };

    if let Some([index, count]) = config.shard {
        let points = config.grid().len();
        ensure!(
            !config.points().is_empty(),
            "shard {index}/{count} holds no point: the grid has {points} (baselines included), \
             so use at most {points} shards"
        );
    }
    let out = run_folder(common, "sweep");
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create sweep folder {}", out.display()))?;
    let _lock = lock_folder(&out)?;
    if common.force {
        sweep::clear(&out, &args.teacher.paths)?;
    }
    // Checked before command.json is written: a refused sweep must not change the folder.
    sweep::check_folder(&config, &out)?;
    if common.resume.is_none() {
        save_command(&out, "sweep")?;
    }
    sweep::run_sweep(&config, &teacher, &data, &out, args.group_size as usize)?;
    if !common.no_plot {
        plot(&out);
    }
    Ok(())
}

/// `kd presets`: what `kd run --preset` knows.
pub fn presets() -> Result<()> {
    print!("{}", preset::describe(&preset::built_in()));
    Ok(())
}

/// `kd eval`: test-set figures of a checkpoint or a TorchScript file, per class too.
pub fn eval(args: &EvalArgs) -> Result<()> {
    let test = load_test_split(&args.data, args.device)?;
    let probe = test.images.narrow(0, 0, test.len().min(2));
    let spec = args.model_spec.as_ref();
    let model = TeacherNet::load(&args.model, args.device, spec, InputLayout::Auto, &probe)?;
    let logits = model.predict(&test.images);
    let name = model.description;

    let eval = evaluation_from_logits(&logits, &test.labels, None);
    println!("model      {} ({name})", args.model.display());
    println!("test acc   {:.2}%", 100.0 * eval.accuracy);
    println!("errors     {} of {}", eval.errors, test.len());
    println!("test loss  {:.4}", eval.loss);
    println!("errors per class:");
    for (class, errors) in eval.class_errors.iter().enumerate() {
        println!("  {class}: {errors}");
    }
    Ok(())
}

/// `kd export`: a checkpoint to TorchScript.
pub fn export(args: &ExportArgs) -> Result<()> {
    ensure!(
        !crate::teacher::is_torchscript(&args.model)?,
        "{} is TorchScript already (kd export takes a kd checkpoint, .safetensors); load it \
         with torch.jit.load as it is",
        args.model.display()
    );
    let mut model = checkpoint::load(&args.model, Device::Cpu, args.model_spec.as_ref())?;
    let folder = match &args.out {
        Some(dir) => dir.clone(),
        None => args.model.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let stem = args.model.file_stem().context("the checkpoint path has no file name")?;
    let path = folder.join(stem).with_extension("pt");
    ensure!(
        args.force || !path.exists(),
        "{} exists; pass --force to overwrite it or choose another --out",
        path.display()
    );
    export_torchscript(&mut model, &path, &args.model.display().to_string())?;
    println!("{}", path.display());
    Ok(())
}

fn load_data(common: &CommonArgs) -> Result<Mnist> {
    let data = load_mnist(&common.data, common.device, common.train_limit)?;
    status(&format!(
        "data: {} training and {} test images of {IMAGE_PIXELS} pixels from {} on {}, seed {}",
        data.train.len(),
        data.test.len(),
        common.data.display(),
        device_name(common.device),
        common.seed
    ));
    Ok(data)
}

/// Loads the teacher (or ensemble) named by `source`, checked on a few of `data`'s images.
fn load_teacher(source: &TeacherSource, common: &CommonArgs, data: &Mnist) -> Result<Teacher> {
    let probe = data.test.images.narrow(0, 0, data.test.len().min(2));
    let spec = source.teacher_model.as_ref();
    let teacher = Teacher::load(
        &source.paths,
        common.device,
        spec,
        source.teacher_input,
        source.ensemble,
        &probe,
    )?;
    for member in &teacher.members {
        status(&format!(
            "teacher: {} from {}, {} parameters",
            member.description,
            member.source.display(),
            member.params
        ));
    }
    Ok(teacher)
}

fn new_model(spec: &ModelSpec, common: &CommonArgs, phase: Phase) -> Model {
    let model = seeded_model(spec, CLASSES, common.device, common.seed);
    status(&format!("{}: {spec}, {} parameters", phase.name(), model.parameter_count()));
    model
}

fn save_student(student: &mut Model, dir: &RunDir) -> Result<()> {
    let checkpoint = dir.file("student.safetensors");
    checkpoint::save(student, &checkpoint)?;
    // Absolute, so the card names the same file in a fresh run and after --resume.
    let source = std::path::absolute(&checkpoint).unwrap_or(checkpoint).display().to_string();
    export_torchscript(student, &dir.file("student.pt"), &source)
}

fn summary_row(
    phase: Phase,
    model: &Model,
    records: &[EpochRecord],
    kd: Option<&DistillConfig>,
) -> SummaryRow {
    let last = records.last().expect("every phase runs at least one epoch");
    SummaryRow {
        phase: phase.name().to_string(),
        model: model.spec.to_string(),
        params: model.parameter_count(),
        temperature: kd.map(|k| k.temperature),
        alpha: kd.map(|k| k.alpha),
        epochs: records.len() as i64,
        test_acc: last.test_acc,
        test_errors: last.test_errors,
        agreement: last.agreement,
        seconds: records.iter().map(|r| r.seconds).sum(),
        omitted_errors: None,
        paper_errors: None,
        paper_omitted_errors: None,
        difference: None,
    }
}

/// Opens the run folder of a training command: a new one, with its `config.json` and
/// `command.json`, or (`--resume`) the killed one, whose state files hold the epochs done of
/// `phases`.
fn open_run(
    common: &CommonArgs,
    command: &str,
    config: &RunConfig,
    phases: &[Phase],
) -> Result<RunDir> {
    if let Some(dir) = &common.resume {
        status(&format!("resuming the run in {}", dir.display()));
        return RunDir::resume(dir, phases);
    }
    let dir =
        RunDir::create(&run_folder(common, command), common.force, &config.teacher_checkpoints)?;
    dir.write_config(config)?;
    save_command(&dir.path, command)?;
    Ok(dir)
}

/// Trains one phase in a run folder, continuing from the phase's state file when there is one
/// (a resumed run). After every epoch the state is saved (whole, by a rename) before the
/// epoch's row goes to `metrics.csv`.
fn run_phase(
    dir: &mut RunDir,
    model: &mut Model,
    phase: Phase,
    train: impl FnOnce(&mut Model, Option<PhaseState>, &mut OnEpoch) -> Result<Vec<EpochRecord>>,
) -> Result<Vec<EpochRecord>> {
    let path = dir.file(&state_file(phase));
    let resume = match path.exists() {
        true => Some(checkpoint::load_state(&path, model)?),
        false => None,
    };
    if let Some(state) = &resume {
        status(&format!("{}: continuing after epoch {}", phase.name(), state.epochs_done));
    }
    let result = train(model, resume, &mut |end| {
        checkpoint::save_state(end.model, end.optimizer, end.records, &path)?;
        dir.record_epoch(end.record)
    });
    result.map_err(|error| {
        let kept = match path.exists() {
            true => format!("its last whole epoch is kept in {}", path.display()),
            false => "before its first epoch ended".to_string(),
        };
        let next = match crate::interrupt::is_interrupt(&error) {
            true => format!("; continue with --resume {}", dir.path.display()),
            false => String::new(),
        };
        error.context(format!("the {} phase stopped ({kept}{next})", phase.name()))
    })
}

fn finish(dir: &RunDir, rows: &[SummaryRow], common: &CommonArgs) -> Result<()> {
    dir.write_summary(rows)?;
    dir.remove_states()?;
    print!("{}", table(rows));
    status(&format!("results in {}", dir.path.display()));
    if !common.no_plot {
        plot(&dir.path);
    }
    Ok(())
}

fn run_folder(common: &CommonArgs, command: &str) -> PathBuf {
    common.out.clone().unwrap_or_else(|| {
        let time = chrono::Local::now().format("%Y%m%d-%H%M%S");
        PathBuf::from("runs").join(format!("{command}-{time}"))
    })
}

/// Refuses a grid list that names a value twice (it would count as an extra seed).
fn no_repeats<T: PartialEq + std::fmt::Display>(option: &str, values: &[T]) -> Result<()> {
    for (i, value) in values.iter().enumerate() {
        ensure!(!values[..i].contains(value), "{option} lists {value} more than once");
    }
    Ok(())
}

/// Draws a run or sweep folder's PNG plots with `scripts/plot.py` and the set-up's Python
/// (`$KD_PYTHON` overrides it) and prints where they went. Plotting never fails the command:
/// the results are already saved.
fn plot(dir: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python =
        std::env::var_os("KD_PYTHON").map_or_else(|| repo.join(".venv/bin/python"), PathBuf::from);
    let script = repo.join("scripts/plot.py");
    if !python.exists() || !script.exists() {
        eprintln!("plots: skipped ({} or {} is missing)", python.display(), script.display());
        return;
    }
    match Command::new(&python).arg(&script).arg(dir).output() {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).lines().for_each(|png| println!("plot: {png}"))
        }
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            eprintln!("warning: plotting failed: {}", stderr.lines().last().unwrap_or_default());
        }
        Err(error) => eprintln!("warning: cannot run {}: {error}", python.display()),
    }
}

fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
