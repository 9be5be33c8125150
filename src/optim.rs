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
