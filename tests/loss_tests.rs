//! The distillation loss against reference values.
//!
//! Every expected number below was computed with PyTorch 2.11.0 in float32 from the same
//! logits, by `T*T * (lt.exp() * (lt - ls)).sum(1).mean()` with `lt = log_softmax(teacher / T)`
//! and `ls = log_softmax(student / T)` (equal to `T*T * F.kl_div(ls, lt, reduction="batchmean",
//! log_target=True)`), `F.cross_entropy` for the hard term, and `.backward()` for gradients.
//! Tolerance: 1e-5 absolute.

use kd::loss::{KdLoss, cross_entropy, distillation_loss, soft_target_loss};
use tch::Tensor;

const TOL: f64 = 1e-5;

fn logits(rows: &[[f32; 3]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, 3])
}

/// Batch F: two samples, teacher and student logits with labels 0 and 1.
fn batch_f() -> (Tensor, Tensor, Tensor) {
    let teacher = logits(&[[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]]);
    let student = logits(&[[1.0, 1.0, 1.0], [0.2, 1.5, -0.3]]);
    (student, teacher, Tensor::from_slice(&[0i64, 1]))
}

fn value(t: &Tensor) -> f64 {
    t.double_value(&[])
}

fn assert_close(got: f64, expected: f64, what: &str) {
    assert!((got - expected).abs() <= TOL, "{what}: got {got}, expected {expected}");
}

#[test]
fn batch_f_terms_and_total_match_pytorch() {
    let (student, teacher, labels) = batch_f();
    assert_close(value(&soft_target_loss(&student, &teacher, 4.0, KdLoss::Kl)), 0.261157, "T^2 KL");
    assert_close(value(&cross_entropy(&student, &labels)), 0.730874, "CE");
    let total = distillation_loss(&student, &teacher, &labels, 4.0, 0.9, KdLoss::Kl);
    assert_close(value(&total), 0.308129, "total");
}

#[test]
fn alpha_one_ignores_labels_and_alpha_zero_is_cross_entropy() {
    let (student, teacher, labels) = batch_f();
    let other_labels = Tensor::from_slice(&[2i64, 0]);
    for labels in [&labels, &other_labels] {
        let soft_only = distillation_loss(&student, &teacher, labels, 4.0, 1.0, KdLoss::Kl);
        assert_close(value(&soft_only), 0.261157, "alpha = 1");
    }
    let hard_only = distillation_loss(&student, &teacher, &labels, 4.0, 0.0, KdLoss::Kl);
    assert_close(value(&hard_only), 0.730874, "alpha = 0");
}

#[test]
fn sample_a_value_and_gradient_match_pytorch() {
    let (student, teacher, _) = batch_f();
    let student_a = student.narrow(0, 0, 1).detach().set_requires_grad(true);
    let loss = soft_target_loss(&student_a, &teacher.narrow(0, 0, 1), 4.0, KdLoss::Kl);
    assert_close(value(&loss), 0.299355, "T^2 KL of sample A");
    loss.backward();
    let grad = Vec::<f32>::try_from(student_a.grad().view([-1])).unwrap();
    for (got, expected) in grad.iter().zip([-0.332857, 0.0357028, 0.297154]) {
        assert_close(f64::from(*got), expected, "gradient of sample A");
    }
}

#[test]
fn soft_cross_entropy_and_kl_differ_in_value_but_share_the_gradient() {
    let (student, teacher, _) = batch_f();
    let teacher_a = teacher.narrow(0, 0, 1);
    let mut grads = vec![];
    for (kind, expected) in [(KdLoss::SoftCe, 1.09861), (KdLoss::Kl, 0.251874)] {
        let student_a = student.narrow(0, 0, 1).detach().set_requires_grad(true);
        let loss = soft_target_loss(&student_a, &teacher_a, 1.0, kind);
        assert_close(value(&loss), expected, &format!("{kind} at T = 1"));
        loss.backward();
        grads.push(student_a.grad());
    }
    let difference = (&grads[0] - &grads[1]).abs().max();
    assert!(value(&difference) < 1e-7, "gradients differ by {}", value(&difference));
}

#[test]
fn a_very_low_temperature_stays_finite() {
    let teacher = logits(&[[10.0, 0.0, 0.0]]);
    let student = logits(&[[0.0, 0.0, 0.0]]).set_requires_grad(true);
    let loss = soft_target_loss(&student, &teacher, 0.05, KdLoss::Kl);
    assert_close(value(&loss), 0.00274653, "T^2 KL at T = 0.05");
    loss.backward();
    let grad = student.grad();
    assert!(value(&grad.isfinite().all()) == 1.0, "gradient {grad:?}");
}

#[test]
fn kl_is_zero_exactly_for_logits_equal_up_to_a_constant() {
    let teacher = logits(&[[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]]);
    let shifted = &teacher + 3.0;
    let kl = value(&soft_target_loss(&shifted, &teacher, 4.0, KdLoss::Kl));
    assert!(kl.abs() < 1e-6, "KL between shifted copies is {kl}");
    let (student, _, _) = batch_f();
    assert!(value(&soft_target_loss(&student, &teacher, 4.0, KdLoss::Kl)) > 1e-3);
}

#[test]
fn the_teacher_receives_no_gradient() {
    let (student, teacher, labels) = batch_f();
    let student = student.set_requires_grad(true);
    let teacher = teacher.set_requires_grad(true);
    distillation_loss(&student, &teacher, &labels, 4.0, 0.9, KdLoss::Kl).backward();
    assert!(!teacher.grad().defined(), "the teacher's logits got a gradient");
    assert!(student.grad().defined());
}

#[test]
fn confident_correct_logits_have_near_zero_cross_entropy() {
    let ce = value(&cross_entropy(&logits(&[[100.0, 0.0, 0.0]]), &Tensor::from_slice(&[0i64])));
    assert!((0.0..1e-6).contains(&ce), "CE = {ce}");
}
