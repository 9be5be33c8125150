//! TorchScript export: a trained model traced in evaluation mode into a `.pt` file that plain
//! PyTorch (`torch.jit.load`) and libtorch C++ load as they are, plus a JSON card beside it that
//! says what the model expects.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use tch::{CModule, Kind, Tensor};

use crate::checkpoint::temporary_path;
use crate::data::IMAGE_PIXELS;
use crate::models::Model;
use crate::report::write_atomically;

/// What the JSON card beside an export records.
#[derive(Debug, Serialize)]
pub struct ExportCard {
    pub model: String,
    pub classes: i64,
    pub input_shape: [i64; 2],
    pub input: &'static str,
    pub output: &'static str,
    pub source: String,
}

/// Traces `model` in evaluation mode and saves it as TorchScript at `path`, with the card
/// `<path without extension>.json` beside it. `source` names the checkpoint or run it came from.
///
/// The weights become constants of the traced graph, which share the model's tensors: they must
/// not require gradients when traced nor when saved (PyTorch refuses to load such constants), so
/// the model stays frozen until the file is written.
pub fn export_torchscript(model: &mut Model, path: &Path, source: &str) -> Result<()> {
    model.vs.freeze();
    let written = trace_and_save(model, path);
    model.vs.unfreeze();
    written?;

    let card = ExportCard {
        model: model.spec.to_string(),
        classes: model.classes,
        input_shape: [-1, IMAGE_PIXELS],
        input: "float32 pixels scaled to [0, 1] (byte value / 255), row-major 28x28 flattened",
        output: "float32 logits [batch, classes]",
        source: source.to_string(),
    };
    write_atomically(&path.with_extension("json"), serde_json::to_string_pretty(&card)?.as_bytes())
}

fn trace_and_save(model: &Model, path: &Path) -> Result<()> {
    let example = Tensor::zeros([1, IMAGE_PIXELS], (Kind::Float, model.device()));
    let module = tch::no_grad(|| {
        CModule::create_by_tracing("KdModel", "forward", &[example], &mut |inputs| {
            vec![model.forward_t(&inputs[0], false)]
        })
    })
    .context("tracing the model failed")?;

    let tmp = temporary_path(path);
    module.save(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", tmp.display()))
}
