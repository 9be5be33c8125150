//! Checkpoints and the teacher's isolation, on a small teacher trained briefly on real MNIST.

mod common;

use kd::checkpoint;
use kd::data::{CLASSES, Mnist, load_mnist};
use kd::loss::KdLoss;
use kd::models::{Model, ModelSpec};
use kd::teacher::{Teacher, TeacherNet};
use kd::train::{
    DistillConfig, PhaseConfig, Schedule, distill, evaluate, seeded_model, train_teacher,
};
use std::path::Path;
use tch::{Device, Tensor};

fn data(samples: i64) -> Mnist {
    load_mnist(&common::mnist_dir(), Device::Cpu, Some(samples)).unwrap()
}

fn config(epochs: i64, jitter: i64) -> PhaseConfig {
    PhaseConfig {
        epochs,
        batch_size: 64,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 0.0,
        schedule: Schedule::Cosine,
        warmup_epochs: 0,
        jitter,
        seed: 7,
    }
}

fn spec(text: &str) -> ModelSpec {
    text.parse().unwrap()
}

fn trained_teacher(data: &Mnist) -> Model {
    let mut teacher = seeded_model(&spec("mlp:128:dropout=0.5"), CLASSES, Device::Cpu, 7);
    train_teacher(&mut teacher, data, &config(2, 0), None, &mut |_| Ok(())).unwrap();
    teacher
}

fn snapshot(model: &Model) -> Vec<(String, Tensor)> {
    let mut variables: Vec<_> =
        model.vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
}

#[test]
fn a_reloaded_teacher_has_the_same_parameters_and_accuracy() {
    let data = data(2000);
    let teacher = trained_teacher(&data);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("teacher.safetensors");
    checkpoint::save(&teacher, &path).unwrap();

    let reloaded = checkpoint::load(&path, Device::Cpu, None).unwrap();
    assert_eq!(reloaded.spec, teacher.spec);
    assert_eq!(reloaded.parameter_count(), teacher.parameter_count());
    let (before, after) =
        (evaluate(&teacher, &data.test, None), evaluate(&reloaded, &data.test, None));
    // Chance is 0.1; two short epochs reach about 0.9. (Tests share libtorch's generator
    // across threads, so the exact figure varies from run to run.)
    assert!(before.accuracy > 0.75, "the teacher did not learn: {}", before.accuracy);
    assert_eq!(before.errors, after.errors);
    for ((name, a), (_, b)) in snapshot(&teacher).iter().zip(snapshot(&reloaded).iter()) {
        assert!(a.equal(b), "{name} changed in the round trip");
    }
}

#[test]
fn loading_into_a_mismatched_model_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.safetensors");
    checkpoint::save(&Model::new(&spec("mlp:32"), CLASSES, Device::Cpu), &path).unwrap();

    let mut wider = Model::new(&spec("mlp:64"), CLASSES, Device::Cpu);
    let error = format!("{:#}", checkpoint::load_into(&mut wider, &path).unwrap_err());
    assert!(error.contains("layer0.bias is [32] in the file but [64] in the model"), "{error}");

    let mut deeper = Model::new(&spec("mlp:32x32"), CLASSES, Device::Cpu);
    let error = format!("{:#}", checkpoint::load_into(&mut deeper, &path).unwrap_err());
    assert!(error.contains("missing") && error.contains("layer2.weight"), "{error}");

    let error =
        format!("{:#}", checkpoint::load(&path, Device::Cpu, Some(&spec("mlp:64"))).unwrap_err());
    assert!(error.contains("holds a mlp:32 model, not mlp:64"), "{error}");
}

#[test]
fn a_partial_or_foreign_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::new(&spec("mlp:32"), CLASSES, Device::Cpu);
    let variables = model.vs.variables();
    let partial = dir.path().join("partial.safetensors");
    Tensor::write_safetensors(&[("layer0.weight", &variables["layer0.weight"])], &partial).unwrap();
    let error = format!(
        "{:#}",
        checkpoint::load(&partial, Device::Cpu, Some(&spec("mlp:32"))).unwrap_err()
    );
    assert!(error.contains("missing") && error.contains("layer1.bias"), "{error}");

    let error = format!("{:#}", checkpoint::load(&partial, Device::Cpu, None).unwrap_err());
    assert!(error.contains("does not say which model"), "{error}");

    let text = dir.path().join("notes.safetensors");
    std::fs::write(&text, "not a checkpoint").unwrap();
    let error = format!("{:#}", checkpoint::load(&text, Device::Cpu, None).unwrap_err());
    assert!(error.contains("is not a safetensors checkpoint"), "{error}");
}

#[test]
fn distillation_leaves_the_teacher_bitwise_unchanged() {
    let data = data(2000);
    let model = trained_teacher(&data);
    let before = snapshot(&model);
    // Handles on the very tensors the teacher computes with.
    let live = model.vs.variables();
    let teacher = Teacher::single(TeacherNet::from_model(model, Path::new("teacher")));
    let kd = DistillConfig { temperature: 4.0, alpha: 0.9, kd_loss: KdLoss::Kl };

    // Cached teacher logits (no jitter) and the live teacher (jitter) both.
    for jitter in [0, 1] {
        let mut student = seeded_model(&spec("mlp:32"), CLASSES, Device::Cpu, 7);
        let config = config(1, jitter);
        let records =
            distill(&mut student, &teacher, &data, &config, &kd, None, &mut |_| Ok(())).unwrap();
        assert!(records[0].agreement.unwrap() > 0.5);
    }
    for (name, a) in &before {
        assert!(a.equal(&live[name]), "distillation changed the teacher's {name}");
    }

    // The teacher has dropout; in evaluation mode two forwards are bitwise equal.
    let first = teacher.logits(&data.test.images);
    let second = teacher.logits(&data.test.images);
    assert!(first.equal(&second));
}

/// safetensors writes its metadata in hash-map order, which varies from one map to the next;
/// `kd` sorts the header, so the same model saved twice gives the same bytes, and the header
/// lists its keys in order. Without the sorting, the two metadata keys come out in either order.
#[test]
fn equal_checkpoints_are_equal_files() {
    let dir = tempfile::tempdir().unwrap();
    let model = seeded_model(&spec("mlp:8"), CLASSES, Device::Cpu, 3);
    let files: Vec<Vec<u8>> = (0..8)
        .map(|k| {
            let path = dir.path().join(format!("m{k}.safetensors"));
            checkpoint::save(&model, &path).unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect();
    assert!(files.iter().all(|f| f == &files[0]), "the same model gave different files");

    let length = u64::from_le_bytes(files[0][..8].try_into().unwrap()) as usize;
    assert_eq!(length % 8, 0, "the header is not padded to 8 bytes");
    let header = std::str::from_utf8(&files[0][8..8 + length]).unwrap();
    let classes = header.find("\"kd.classes\"").unwrap();
    let model_key = header.find("\"kd.model\"").unwrap();
    assert!(classes < model_key, "metadata keys out of order: {header}");
    let reloaded = checkpoint::load(&dir.path().join("m0.safetensors"), Device::Cpu, None).unwrap();
    assert_eq!(reloaded.spec.to_string(), "mlp:8");
}
