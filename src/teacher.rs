//! Teachers as the student sees them: a `kd` checkpoint, a TorchScript file made in PyTorch
//! (`torch.jit.script` or `torch.jit.trace`), or an ensemble of any mix of these.
//!
//! Every teacher runs in evaluation mode without gradients and is never handed to an optimizer.
//! A TorchScript teacher is checked before training: on a probe batch it must return
//! `[batch, classes]`, and the input layout it expects (flat `[n, 784]` or images
//! `[n, 1, 28, 28]`) is found by trying both unless `--teacher-input` names one.
//!
//! An ensemble's soft targets at temperature T are, by default, the average of its members'
//! softened probabilities, `mean_i softmax(z_i / T)`, as in Hinton et al.; or, by option, the
//! softmax of the averaged logits. Both are handed to the loss as logits whose softmax at T is
//! the target (see [`soft_target_logits`]), so the losses need not know about ensembles.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use tch::{CModule, Device, Kind, Tensor};

use crate::checkpoint;
use crate::data::{CLASSES, IMAGE_SIDE};
use crate::models::{Model, ModelSpec};

/// Rows per forward when a teacher runs over a whole split.
const CHUNK: i64 = 2000;

/// How an ensemble's members are combined into one soft target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Ensemble {
    /// The average of the members' temperature-softened probabilities.
    Probabilities,
    /// The softmax of the members' averaged logits.
    Logits,
}

/// The input layout a TorchScript teacher expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputLayout {
    /// Try flat rows first, then images.
    Auto,
    /// `[n, 784]` rows of pixels.
    Flat,
    /// `[n, 1, 28, 28]` images.
    Image,
}

/// One teacher network.
pub struct TeacherNet {
    /// Where it came from (a file, or the run that trained it).
    pub source: PathBuf,
    /// The `kd` spec, or `torchscript:` and the path as given.
    pub description: String,
    pub params: i64,
    net: Net,
}

enum Net {
    Kd(Model),
    Script { module: CModule, image_input: bool },
}

impl TeacherNet {
    /// A `kd` model (trained in this process or loaded) as a teacher.
    pub fn from_model(model: Model, source: &Path) -> TeacherNet {
        TeacherNet {
            source: source.to_path_buf(),
            description: model.spec.to_string(),
            params: model.parameter_count(),
            net: Net::Kd(model),
        }
    }

    /// Loads a `kd` checkpoint or a TorchScript file (told apart by content), on `device`.
    /// `spec` serves checkpoints that do not record theirs; `probe` is a few dataset images
    /// `[b, 784]` on which the teacher must give `[b, classes]`.
    pub fn load(
        path: &Path,
        device: Device,
        spec: Option<&ModelSpec>,
        layout: InputLayout,
        probe: &Tensor,
    ) -> Result<TeacherNet> {
        ensure!(!path.is_dir(), "{} is a folder, not a model file", path.display());
        ensure!(path.is_file(), "{} does not exist", path.display());
        let script_name = path.extension().is_some_and(|e| e == "pt" || e == "pth");
        if !is_torchscript(path)? {
            ensure!(
                !script_name,
                "{} is not a TorchScript model: it is not the zip archive torch.jit.save writes",
                path.display()
            );
            let model = checkpoint::load(path, device, spec)?;
            ensure!(
                model.classes == CLASSES,
                "{} has {} classes, not MNIST's {CLASSES}",
                path.display(),
                model.classes
            );
            let net = TeacherNet::from_model(model, path);
            check_finite(&net.predict(probe), path)?;
            return Ok(net);
        }

        let mut module = CModule::load_on_device(path, device).map_err(|e| {
            anyhow!(
                "{} is a zip archive but not a TorchScript model (a state_dict saved with \
                 torch.save? save the model from torch.jit.script or torch.jit.trace); \
                 libtorch says: {}",
                path.display(),
                torch_message(&e).split(". ").next().unwrap_or_default()
            )
        })?;
        module.set_eval();
        let image_input = find_layout(&module, path, layout, probe)?;
        check_finite(&tch::no_grad(|| script_forward(&module, probe, image_input))?, path)?;
        let params = module
            .named_parameters()
            .map(|p| p.iter().map(|(_, t)| t.numel() as i64).sum())
            .unwrap_or(0);
        let shape = if image_input { "[n, 1, 28, 28]" } else { "[n, 784]" };
        log::info!("{} is a TorchScript teacher taking {shape}", path.display());
        Ok(TeacherNet {
            source: path.to_path_buf(),
            description: format!("torchscript:{}", path.display()),
            params,
            net: Net::Script { module, image_input },
        })
    }

    /// Logits `[n, classes]` for pixels `[n, 784]`, in chunks, without gradients.
    pub fn predict(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let chunks: Vec<Tensor> =
                images.split(CHUNK, 0).iter().map(|xs| self.forward(xs)).collect();
            Tensor::cat(&chunks, 0)
        })
    }

    fn forward(&self, images: &Tensor) -> Tensor {
        match &self.net {
            Net::Kd(model) => model.forward_t(images, false),
            Net::Script { module, image_input } => {
                // Checked on the probe batch at load; a later failure is a broken model.
                script_forward(module, images, *image_input)
                    .unwrap_or_else(|e| panic!("the TorchScript teacher failed: {e}"))
            }
        }
    }
}

/// The teacher of a distillation: one network or an ensemble.
pub struct Teacher {
    pub members: Vec<TeacherNet>,
    pub ensemble: Ensemble,
}

impl Teacher {
    /// A single network.
    pub fn single(net: TeacherNet) -> Teacher {
        Teacher { members: vec![net], ensemble: Ensemble::Probabilities }
    }

    /// Loads every path in `paths` (see [`TeacherNet::load`]).
    pub fn load(
        paths: &[PathBuf],
        device: Device,
        spec: Option<&ModelSpec>,
        layout: InputLayout,
        ensemble: Ensemble,
        probe: &Tensor,
    ) -> Result<Teacher> {
        ensure!(!paths.is_empty(), "give a teacher with --teacher");
        let members = paths
            .iter()
            .map(|path| {
                TeacherNet::load(path, device, spec, layout, probe)
                    .with_context(|| format!("cannot use {} as a teacher", path.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Teacher { members, ensemble })
    }

    /// Each member's logits for `images`, stacked: `[members, n, classes]`.
    pub fn member_logits(&self, images: &Tensor) -> Tensor {
        Tensor::stack(&self.members.iter().map(|m| m.predict(images)).collect::<Vec<_>>(), 0)
    }

    /// The teacher's own logits for `images` at temperature 1 (for its predicted classes and
    /// its accuracy): a single member's logits, or the ensemble's combination.
    pub fn logits(&self, images: &Tensor) -> Tensor {
        soft_target_logits(&self.member_logits(images), 1.0, self.ensemble)
    }

    /// A short name for tables: the member's description, or the ensemble's.
    pub fn description(&self) -> String {
        match self.members.as_slice() {
            [one] => one.description.clone(),
            members => format!(
                "ensemble of {} ({})",
                members.len(),
                match self.ensemble {
                    Ensemble::Probabilities => "mean probabilities",
                    Ensemble::Logits => "mean logits",
                }
            ),
        }
    }

    /// Trainable scalars over all members.
    pub fn params(&self) -> i64 {
        self.members.iter().map(|m| m.params).sum()
    }
}

/// Logits whose softmax at `temperature` is the teacher's soft target, from the members' logits
/// `stacked` (`[members, n, classes]`). A single member's logits come back unchanged. For
/// averaged probabilities they are `T * log(mean_i softmax(z_i / T))`; for averaged logits,
/// the mean of the logits.
pub fn soft_target_logits(stacked: &Tensor, temperature: f64, ensemble: Ensemble) -> Tensor {
    let members = stacked.size()[0];
    if members == 1 {
        return stacked.get(0);
    }
    match ensemble {
        Ensemble::Logits => stacked.mean_dim(0, false, Kind::Float),
        Ensemble::Probabilities => {
            let log_probs = (stacked / temperature).log_softmax(-1, Kind::Float);
            (log_probs.logsumexp(0, false) - (members as f64).ln()) * temperature
        }
    }
}

/// Refuses a model whose logits on the probe images are not all finite.
fn check_finite(logits: &Tensor, path: &Path) -> Result<()> {
    let finite = logits.isfinite().all().int64_value(&[]) != 0;
    ensure!(
        finite,
        "{} gives logits that are not finite (NaN or infinite) on MNIST test images",
        path.display()
    );
    Ok(())
}

/// Whether `path` is a zip archive, the container of TorchScript files (a safetensors
/// checkpoint starts with its header length instead).
pub fn is_torchscript(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let read = file.read(&mut magic).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(read == 4 && magic == *b"PK\x03\x04")
}

/// Finds which layout `module` takes by running it on `probe`; returns true for images.
fn find_layout(module: &CModule, path: &Path, layout: InputLayout, probe: &Tensor) -> Result<bool> {
    let candidates: &[bool] = match layout {
        InputLayout::Auto => &[false, true],
        InputLayout::Flat => &[false],
        InputLayout::Image => &[true],
    };
    let mut failures = vec![];
    for &image_input in candidates {
        match tch::no_grad(|| script_forward(module, probe, image_input)) {
            Ok(_) => return Ok(image_input),
            Err(e) => failures.push(e.to_string()),
        }
    }
    bail!("{}: {}", path.display(), failures.join("; "))
}

/// Runs a TorchScript module on pixels `[n, 784]`, reshaped to its layout, and checks that it
/// returns float logits `[n, classes]`.
fn script_forward(module: &CModule, images: &Tensor, image_input: bool) -> Result<Tensor> {
    let n = images.size()[0];
    let (input, shape) = if image_input {
        (images.view([n, 1, IMAGE_SIDE, IMAGE_SIDE]), "[n, 1, 28, 28]")
    } else {
        (images.shallow_clone(), "[n, 784]")
    };
    let output = module
        .forward_ts(&[input])
        .map_err(|e| anyhow!("on a {shape} batch it fails: {}", torch_message(&e)))?;
    ensure!(
        output.size() == [n, CLASSES],
        "on a {shape} batch of {n} it returns shape {:?}, expected [{n}, {CLASSES}] \
         (one logit per MNIST class)",
        output.size()
    );
    Ok(output.to_kind(Kind::Float))
}

/// The gist of a libtorch error in one line, without the C++ stack trace that follows it: its
/// first line, or, for an error raised inside a TorchScript model, the last line of the model's
/// traceback (`RuntimeError: ...`), which says what went wrong.
pub fn torch_message(error: &tch::TchError) -> String {
    let text = error.to_string();
    let text = text.split("Exception raised from").next().unwrap_or_default();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("unknown libtorch error");
    match first.contains("TorchScript interpreter") {
        true => lines.next_back().unwrap_or(first).to_string(),
        false => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from PyTorch 2.11.0: for z1 = [[1, 2, 3]], z2 = [[3, 0, -1]], T = 2,
    /// `((softmax(z1 / 2) + softmax(z2 / 2)) / 2)` printed with 8 digits.
    #[test]
    fn averaged_probabilities_are_the_soft_target() {
        let stacked = Tensor::from_slice(&[1f32, 2.0, 3.0, 3.0, 0.0, -1.0]).view([2, 1, 3]);
        let logits = soft_target_logits(&stacked, 2.0, Ensemble::Probabilities);
        let target = (logits / 2.0).softmax(-1, Kind::Float);
        let expected =
            Tensor::from_slice(&[0.461_224_2f64, 0.235_723_76, 0.303_052_01]).view([1, 3]);
        let target = target.to_kind(Kind::Double);
        let diff = (&target - &expected).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "soft target off by {diff}");

        let mean = soft_target_logits(&stacked, 2.0, Ensemble::Logits);
        let expected = Tensor::from_slice(&[2f32, 1.0, 1.0]).view([1, 3]);
        assert_eq!(mean, expected);
    }

    #[test]
    fn a_single_member_passes_through_unchanged() {
        let stacked = Tensor::from_slice(&[0.5f32, -1.0, 7.0]).view([1, 1, 3]);
        for ensemble in [Ensemble::Probabilities, Ensemble::Logits] {
            assert_eq!(soft_target_logits(&stacked, 4.0, ensemble), stacked.get(0));
        }
    }
}
