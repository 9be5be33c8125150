//! SGD with momentum and weight decay, written out so that its state (the momentum buffers) can
//! be saved in a checkpoint and restored: a resumed phase continues exactly where it stopped.
//!
//! The update is PyTorch's: `d = grad + weight_decay * w`; the first step sets the buffer to
//! `d`, later steps to `momentum * buffer + d`; then `w -= lr * buffer`.

use anyhow::{Context, Result, ensure};
use tch::{Kind, Tensor};

use crate::models::Model;

/// The optimizer of one model.
pub struct Sgd {
    /// The model's trainable variables by name, sorted, with their momentum buffers (undefined
    /// until the first step).
    params: Vec<(String, Tensor, Option<Tensor>)>,
    momentum: f64,
    weight_decay: f64,
    lr: f64,
}

impl Sgd {
    /// An optimizer over `model`'s variables (all of them train), with empty momentum buffers.
    pub fn new(model: &Model, lr: f64, momentum: f64, weight_decay: f64) -> Sgd {
        let mut params: Vec<(String, Tensor, Option<Tensor>)> =
            model.vs.variables().into_iter().map(|(name, t)| (name, t, None)).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Sgd { params, momentum, weight_decay, lr }
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Back-propagates `loss` and updates every variable. The gradients are computed as new
    /// tensors (the variables' `.grad` is never filled, so there is nothing to clear).
    pub fn backward_step(&mut self, loss: &Tensor) {
        let variables: Vec<&Tensor> = self.params.iter().map(|(_, p, _)| p).collect();
        let grads = Tensor::run_backward(&[loss], &variables, false, false);
        let _guard = tch::no_grad_guard();
        let device = variables[0].device();
        let neg_lr = Tensor::from(-self.lr).to_kind(Kind::Float).to_device(device);

        for ((_, param, buffer), grad) in self.params.iter_mut().zip(grads) {
            let step = match self.weight_decay {
                0.0 => grad,
                decay => grad + &*param * decay,
            };
            let step = match (self.momentum, buffer.as_mut()) {
                (0.0, _) => step,
                (_, None) => buffer.insert(step).shallow_clone(),
                (momentum, Some(b)) => {
                    let _ = b.g_mul_scalar_(momentum).g_add_(&step);
                    b.shallow_clone()
                }
            };
            let _ = param.addcmul_(&step, &neg_lr);
        }
    }

    /// The momentum buffers that exist, by variable name (for a checkpoint).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .filter_map(|(name, _, buffer)| {
                buffer.as_ref().map(|b| (name.clone(), b.shallow_clone()))
            })
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`].
    pub fn restore(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        for (name, saved) in state {
            let (_, param, buffer) =
                self.params.iter_mut().find(|(n, _, _)| n == name).with_context(|| {
                    format!("the saved optimizer state names {name}, not in the model")
                })?;
            ensure!(
                saved.size() == param.size(),
                "the saved momentum of {name} is {:?}, the variable {:?}",
                saved.size(),
                param.size()
            );
            *buffer = Some(saved.to_kind(Kind::Float).to_device(param.device()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::cross_entropy;
    use tch::Device;

    /// Values `0.1 * sin(k + offset)`, k = 0, 1, ..., in `shape`.
    fn wave(shape: &[i64], offset: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        ((Tensor::arange(n, (Kind::Double, Device::Cpu)) + offset).sin() * 0.1)
            .to_kind(Kind::Float)
            .view(shape)
    }

    /// Reference from PyTorch 2.11.0: the same MLP 784-3-10 and inputs, built from the same
    /// formulas, after three steps of `torch.optim.SGD(lr=0.1, momentum=0.9,
    /// weight_decay=0.01)` on `F.cross_entropy`, printed with 9 decimals.
    #[test]
    fn three_steps_match_pytorch_sgd() {
        let model = Model::new(&"mlp:3".parse().unwrap(), 10, Device::Cpu);
        let mut names: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (offset, (_, variable)) in names.iter_mut().enumerate() {
                variable.copy_(&wave(&variable.size(), offset as f64));
            }
        });
        let i = Tensor::arange(4 * 784, (Kind::Double, Device::Cpu));
        let xs = (((i * 0.37).sin() + 1.0) / 2.0).to_kind(Kind::Float).view([4, 784]);
        let labels = Tensor::from_slice(&[0i64, 3, 7, 9]);

        let mut sgd = Sgd::new(&model, 0.1, 0.9, 0.01);
        for _ in 0..3 {
            sgd.backward_step(&cross_entropy(&model.forward_t(&xs, true), &labels));
        }

        let variables = model.vs.variables();
        let close = |name: &str, expected: &[f64]| {
            let got = Vec::<f64>::try_from(variables[name].to_kind(Kind::Double)).unwrap();
            for (g, e) in got.iter().zip(expected) {
                assert!((g - e).abs() < 1e-6, "{name}: {got:?} against {expected:?}");
            }
        };
        close(
            "layer1.bias",
            &[
                0.173142076,
                -0.046961173,
                -0.122582585,
                -0.012108796,
                -0.077680908,
                0.001910686,
                0.041186854,
                0.117601454,
                -0.104048826,
                -0.013244917,
            ],
        );
        close("layer0.bias", &[-0.015570250, 0.079418153, 0.108947977]);
        let sum = variables["layer0.weight"].to_kind(Kind::Double).sum(Kind::Double);
        assert!((sum.double_value(&[]) + 0.315727490).abs() < 1e-5);
        assert_eq!(sgd.state().len(), 4, "one momentum buffer per variable");
    }
}
