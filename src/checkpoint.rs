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
use crate::optim::Sgd;
use crate::train::EpochRecord;

const SPEC_KEY: &str = "kd.model";
const CLASSES_KEY: &str = "kd.classes";
const EPOCHS_KEY: &str = "kd.epochs_done";
const RECORDS_KEY: &str = "kd.records";
/// Prefix of the momentum buffers in a state file.
const MOMENTUM: &str = "momentum.";

/// Writes `model`'s variables and spec to `path` (through `path.tmp` and a rename).
pub fn save(model: &Model, path: &Path) -> Result<()> {
    let tensors = model.vs.variables().into_iter().collect();
    write(path, tensors, model_metadata(model))?;
    log::info!("saved {} ({}) to {}", model.spec, model.parameter_count(), path.display());
    Ok(())
}

/// A phase's state at the end of an epoch: what a resumed phase needs besides the weights.
pub struct PhaseState {
    /// Epochs finished.
    pub epochs_done: i64,
    /// Their `metrics.csv` rows.
    pub records: Vec<EpochRecord>,
    /// The optimizer's momentum buffers by variable name.
    pub momentum: Vec<(String, Tensor)>,
}

/// Writes a phase's state file: the model's variables, the optimizer's momentum buffers (as
/// `momentum.<name>`), the epochs done and their records. Whole or absent, like [`save`].
pub fn save_state(
    model: &Model,
    optimizer: &Sgd,
    records: &[EpochRecord],
    path: &Path,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    tensors.extend(optimizer.state().into_iter().map(|(n, t)| (format!("{MOMENTUM}{n}"), t)));
    let mut metadata = model_metadata(model);
    metadata.insert(EPOCHS_KEY.to_string(), records.len().to_string());
    metadata.insert(RECORDS_KEY.to_string(), serde_json::to_string(records)?);
    write(path, tensors, metadata)
}

/// Loads a state file written by [`save_state`] into `model` (which must be the model it was
/// written from, by spec and shapes) and returns the rest of the state.
pub fn load_state(path: &Path, model: &mut Model) -> Result<PhaseState> {
    let bytes = read_file(path)?;
    let (spec, _) = read_metadata(&bytes, path)?;
    ensure!(
        spec.as_ref() == Some(&model.spec),
        "{} holds the state of a {} model, not {}",
        path.display(),
        spec.map_or("unknown".to_string(), |s| s.to_string()),
        model.spec
    );
    copy_weights(model, &bytes, path)?;

    let file = SafeTensors::deserialize(&bytes)?;
    let records = state_records(path)?;
    let momentum = file
        .names()
        .into_iter()
        .filter_map(|name| name.strip_prefix(MOMENTUM).map(|n| (n.to_string(), name)))
        .map(|(name, stored)| Ok((name, tensor_of(&file, stored, path)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(PhaseState { epochs_done: records.len() as i64, records, momentum })
}

/// The epoch records of a state file, read without loading its tensors.
pub fn state_records(path: &Path) -> Result<Vec<EpochRecord>> {
    let bytes = read_file(path)?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a safetensors checkpoint", path.display()))?;
    let info = metadata.metadata().clone().unwrap_or_default();
    let records =
        info.get(RECORDS_KEY).with_context(|| format!("{} records no epochs", path.display()))?;
    serde_json::from_str(records)
        .with_context(|| format!("{}: unreadable epoch records", path.display()))
}

fn model_metadata(model: &Model) -> HashMap<String, String> {
    HashMap::from([
        (SPEC_KEY.to_string(), model.spec.to_string()),
        (CLASSES_KEY.to_string(), model.classes.to_string()),
    ])
}

/// Writes float tensors and metadata as safetensors at `path`, through `path.tmp` and a rename.
fn write(
    path: &Path,
    tensors: Vec<(String, Tensor)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let tensors: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let bytes: BTreeMap<&String, Vec<u8>> =
        tensors.iter().map(|(n, t)| (n, f32_bytes(t))).collect();
    let views = tensors
        .iter()
        .map(|(name, t)| {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            Ok((name.as_str(), TensorView::new(Dtype::F32, shape, &bytes[name])?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;

    let tmp = temporary_path(path);
    let file = safetensors::serialize(views, Some(metadata))?;
    std::fs::write(&tmp, sorted_header(file)?)
        .with_context(|| format!("cannot write checkpoint {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", tmp.display()))
}

/// `file` (safetensors bytes) with its JSON header rewritten with sorted keys. safetensors
/// writes the metadata in hash-map order, which changes from process to process; sorted, equal
/// checkpoints are equal files. The header stays padded with spaces to a multiple of 8 bytes.
fn sorted_header(file: Vec<u8>) -> Result<Vec<u8>> {
    let length = u64::from_le_bytes(file[..8].try_into()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + length])?;
    // serde_json's maps are sorted by key (its preserve_order feature is off).
    let mut sorted = serde_json::to_vec(&header)?;
    sorted.resize(sorted.len().next_multiple_of(8), b' ');

    let mut out = Vec::with_capacity(8 + sorted.len() + file.len() - 8 - length);
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    out.extend_from_slice(&sorted);
    out.extend_from_slice(&file[8 + length..]);
    Ok(out)
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
    let stored: Vec<String> = file
        .names()
        .into_iter()
        .filter(|name| !name.starts_with(MOMENTUM))
        .map(String::from)
        .collect();

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
        let value = tensor_of(&file, &name, path)?;
        ensure!(
            value.size() == variable.size(),
            "{} does not fit a {} model: {name} is {:?} in the file but {:?} in the model",
            path.display(),
            model.spec,
            value.size(),
            variable.size()
        );
        variable.copy_(&value.to_device(variable.device()));
    }
    Ok(())
}

/// The float tensor `name` of a safetensors file, on the CPU.
fn tensor_of(file: &SafeTensors, name: &str, path: &Path) -> Result<Tensor> {
    let view = file.tensor(name)?;
    ensure!(
        view.dtype() == Dtype::F32,
        "{}: {name} is {:?}, expected F32",
        path.display(),
        view.dtype()
    );
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Ok(Tensor::from_data_size(view.data(), &shape, Kind::Float))
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
