//! Model checkpoints: safetensors files whose header also records the model spec and the class
//! count, so `kd distill --teacher FILE` and `kd eval --model FILE` need nothing else.
//!
//! Loading is strict: every variable of the model must be in the file with the same shape, and
//! the file must hold nothing else. A partial or mismatched load is an error, never a silently
//! half-random model. Files are written to a temporary name and renamed, so a checkpoint on disk
//! is always whole.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Device, Kind, Tensor};

use crate::models::{Model, ModelSpec};

const SPEC_KEY: &str = "kd.model";
const CLASSES_KEY: &str = "kd.classes";

/// Writes `model`'s variables and spec to `path` (through `path.tmp` and a rename).
pub fn save(model: &Model, path: &Path) -> Result<()> {
    let variables: BTreeMap<String, Vec<u8>> =
        model.vs.variables().into_iter().map(|(name, t)| (name, f32_bytes(&t))).collect();
    let shapes: HashMap<String, Vec<usize>> = model
        .vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.size().iter().map(|&d| d as usize).collect()))
        .collect();
    let views = variables
        .iter()
        .map(|(name, bytes)| {
            Ok((name.as_str(), TensorView::new(Dtype::F32, shapes[name].clone(), bytes)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = HashMap::from([
        (SPEC_KEY.to_string(), model.spec.to_string()),
        (CLASSES_KEY.to_string(), model.classes.to_string()),
    ]);

    let tmp = temporary_path(path);
    safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .with_context(|| format!("cannot write checkpoint {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} into place", tmp.display()))?;
    log::info!("saved {} ({}) to {}", model.spec, model.parameter_count(), path.display());
    Ok(())
}

/// Builds the model a checkpoint describes and loads its weights, on `device`.
///
/// Files written by `kd` name their spec; for other safetensors files pass `spec` (and the
/// class count is read from the last layer). A given `spec` must agree with the file's.
pub fn load(path: &Path, device: Device, spec: Option<&ModelSpec>) -> Result<Model> {
    let bytes = read_file(path)?;
    let (stored_spec, stored_classes) = read_metadata(&bytes, path)?;
    let spec = match (stored_spec, spec) {
        (Some(stored), Some(given)) if &stored != given => {
            bail!("{} holds a {stored} model, not {given}", path.display())
        }
        (Some(stored), _) => stored,
        (None, Some(given)) => given.clone(),
        (None, None) => {
            let hint = "give its spec (--teacher-model or --model-spec)";
            bail!("{} does not say which model it holds: {hint}", path.display())
        }
    };
    let classes = stored_classes.unwrap_or(crate::data::CLASSES);
    let mut model = Model::new(&spec, classes, device);
    copy_weights(&mut model, &bytes, path)?;
    log::info!("loaded {spec} with {classes} classes from {}", path.display());
    Ok(model)
}

/// Loads the weights in `path` into an already built `model`, strictly (see the module doc).
pub fn load_into(model: &mut Model, path: &Path) -> Result<()> {
    let bytes = read_file(path)?;
    copy_weights(model, &bytes, path)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))
}

fn read_metadata(bytes: &[u8], path: &Path) -> Result<(Option<ModelSpec>, Option<i64>)> {
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .with_context(|| format!("{} is not a safetensors checkpoint", path.display()))?;
    let Some(info) = metadata.metadata() else { return Ok((None, None)) };
    let spec = info
        .get(SPEC_KEY)
        .map(|s| s.parse::<ModelSpec>())
        .transpose()
        .with_context(|| format!("{} records a model spec kd cannot read", path.display()))?;
    let classes = info
        .get(CLASSES_KEY)
        .map(|c| {
            c.parse::<i64>().with_context(|| format!("{}: bad class count '{c}'", path.display()))
        })
        .transpose()?;
    Ok((spec, classes))
}

fn copy_weights(model: &mut Model, bytes: &[u8], path: &Path) -> Result<()> {
    let file = SafeTensors::deserialize(bytes)
        .with_context(|| format!("{} is not a safetensors checkpoint", path.display()))?;
    let variables = model.vs.variables();
    let stored: Vec<String> = file.names().into_iter().map(String::from).collect();

    let mut missing: Vec<&String> =
        variables.keys().filter(|name| !stored.contains(name)).collect();
    missing.sort();
    let extra: Vec<&String> = stored.iter().filter(|name| !variables.contains_key(*name)).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "{} does not fit a {} model: missing {missing:?}, unexpected {extra:?}",
        path.display(),
        model.spec
    );

    let mut variables: Vec<(String, Tensor)> = variables.into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let _guard = tch::no_grad_guard();
    for (name, mut variable) in variables {
        let view = file.tensor(&name)?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        ensure!(
            view.dtype() == Dtype::F32,
            "{}: {name} is {:?}, expected F32",
            path.display(),
            view.dtype()
        );
        ensure!(
            shape == variable.size(),
            "{} does not fit a {} model: {name} is {shape:?} in the file but {:?} in the model",
            path.display(),
            model.spec,
            variable.size()
        );
        let value = Tensor::from_data_size(view.data(), &shape, Kind::Float);
        variable.copy_(&value.to_device(variable.device()));
    }
    Ok(())
}

fn f32_bytes(tensor: &Tensor) -> Vec<u8> {
    let values =
        Vec::<f32>::try_from(tensor.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))
            .expect("a float tensor converts to Vec<f32>");
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `path` with `.tmp` appended: where a file is written before it is renamed into place.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}
