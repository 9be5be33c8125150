//! Teacher and student networks: thin tch wrappers chosen by a model spec string.
//!
//! A spec is `KIND:SIZES[:OPTION=VALUE,...]`:
//! - `mlp:1200x1200`: ReLU MLP on the flat 784-pixel input, one hidden layer per size;
//! - `cnn:32x64`: two 5x5 convolutions (with these channel counts) each followed by 2x2 max
//!   pooling, then a hidden linear layer (`hidden=`, default 256).
//!
//! Options: `dropout=P` (hidden layers), `input-dropout=P` (MLP input), `max-norm=C` (after each
//! step, every unit's incoming weight vector is rescaled to an L2 norm of at most C, as for the
//! paper's teacher). Every model takes `[batch, 784]` pixels in [0, 1] and returns
//! `[batch, classes]` logits.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use crate::data::{IMAGE_PIXELS, IMAGE_SIDE};

/// Which network, its sizes and its regularisation.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub arch: Arch,
    pub dropout: f64,
    pub input_dropout: f64,
    pub max_norm: Option<f64>,
}

/// The network family and its sizes.
#[derive(Debug, Clone, PartialEq)]
pub enum Arch {
    /// Hidden layer widths.
    Mlp { hidden: Vec<i64> },
    /// Channels of the two convolutions, and the width of the hidden linear layer.
    Cnn { channels: [i64; 2], hidden: i64 },
}

impl FromStr for ModelSpec {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        parse_spec(text).map_err(|cause| {
            anyhow::anyhow!(
                "invalid model spec '{text}': {cause:#} (expected e.g. mlp:1200x1200, \
                 mlp:800x800:dropout=0.5 or cnn:32x64)"
            )
        })
    }
}

fn parse_spec(text: &str) -> Result<ModelSpec> {
    let mut parts = text.splitn(3, ':');
    let kind = parts.next().unwrap_or_default();
    let sizes = parse_sizes(parts.next().unwrap_or_default())?;
    let mut spec = ModelSpec {
        arch: Arch::Mlp { hidden: vec![] },
        dropout: 0.0,
        input_dropout: 0.0,
        max_norm: None,
    };
    let mut cnn_hidden = 256;

    for option in parts.next().unwrap_or_default().split(',').filter(|o| !o.is_empty()) {
        let (key, value) = option
            .split_once('=')
            .with_context(|| format!("option '{option}' is not KEY=VALUE"))?;
        let value: f64 =
            value.parse().with_context(|| format!("option {key}: '{value}' is not a number"))?;
        match key {
            "dropout" | "input-dropout" => {
                ensure!((0.0..1.0).contains(&value), "{key} must be in [0, 1), got {value}");
                *(if key == "dropout" { &mut spec.dropout } else { &mut spec.input_dropout }) =
                    value;
            }
            "max-norm" => {
                ensure!(value > 0.0, "max-norm must be positive, got {value}");
                spec.max_norm = Some(value);
            }
            "hidden" if kind == "cnn" => {
                ensure!(value >= 1.0 && value.fract() == 0.0, "hidden must be a positive integer");
                cnn_hidden = value as i64;
            }
            _ => bail!("unknown option '{key}' for {kind}"),
        }
    }

    spec.arch = match kind {
        "mlp" => Arch::Mlp { hidden: sizes },
        "cnn" => match sizes[..] {
            [c1, c2] => Arch::Cnn { channels: [c1, c2], hidden: cnn_hidden },
            _ => bail!("cnn takes two channel counts, like cnn:32x64"),
        },
        _ => bail!("unknown model kind '{kind}' (known: mlp, cnn)"),
    };
    ensure!(spec.input_dropout == 0.0 || kind == "mlp", "input-dropout is for mlp only");
    Ok(spec)
}

fn parse_sizes(text: &str) -> Result<Vec<i64>> {
    ensure!(!text.is_empty(), "missing layer sizes");
    text.split('x')
        .map(|s| match s.parse::<i64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("layer size '{s}' is not a positive integer"),
        })
        .collect()
}

impl fmt::Display for ModelSpec {
    /// The canonical spec string, which parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let join = |sizes: &[i64]| sizes.iter().map(i64::to_string).collect::<Vec<_>>().join("x");
        let mut options = vec![];
        match &self.arch {
            Arch::Mlp { hidden } => write!(f, "mlp:{}", join(hidden))?,
            Arch::Cnn { channels, hidden } => {
                write!(f, "cnn:{}", join(channels))?;
                if *hidden != 256 {
                    options.push(format!("hidden={hidden}"));
                }
            }
        }
        if self.dropout > 0.0 {
            options.push(format!("dropout={}", self.dropout));
        }
        if self.input_dropout > 0.0 {
            options.push(format!("input-dropout={}", self.input_dropout));
        }
        if let Some(c) = self.max_norm {
            options.push(format!("max-norm={c}"));
        }
        if !options.is_empty() {
            write!(f, ":{}", options.join(","))?;
        }
        Ok(())
    }
}

/// A built network: its spec, its variables and its layers.
pub struct Model {
    pub spec: ModelSpec,
    pub classes: i64,
    pub vs: nn::VarStore,
    net: Net,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Model")
            .field("spec", &self.spec.to_string())
            .field("classes", &self.classes)
            .field("device", &self.device())
            .field("parameters", &self.parameter_count())
            .finish()
    }
}

enum Net {
    Mlp(Vec<nn::Linear>),
    Cnn(Box<Cnn>),
}

struct Cnn {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Model {
    /// Builds `spec` with freshly initialised weights on `device` (tch's default initialisation,
    /// drawn from libtorch's generator, so `tch::manual_seed` fixes it).
    pub fn new(spec: &ModelSpec, classes: i64, device: Device) -> Model {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let net = match &spec.arch {
            Arch::Mlp { hidden } => {
                let widths: Vec<i64> = std::iter::once(IMAGE_PIXELS)
                    .chain(hidden.iter().copied())
                    .chain([classes])
                    .collect();
                let layers = widths
                    .windows(2)
                    .enumerate()
                    .map(|(i, w)| {
                        nn::linear(&root / format!("layer{i}"), w[0], w[1], Default::default())
                    })
                    .collect();
                Net::Mlp(layers)
            }
            Arch::Cnn { channels: [c1, c2], hidden } => {
                // Two 5x5 convolutions (no padding), each halved by pooling:
                // 28 -> 24 -> 12 -> 8 -> 4.
                let side = ((IMAGE_SIDE - 4) / 2 - 4) / 2;
                let flat = c2 * side * side;
                Net::Cnn(Box::new(Cnn {
                    conv1: nn::conv2d(&root / "conv1", 1, *c1, 5, Default::default()),
                    conv2: nn::conv2d(&root / "conv2", *c1, *c2, 5, Default::default()),
                    fc1: nn::linear(&root / "fc1", flat, *hidden, Default::default()),
                    fc2: nn::linear(&root / "fc2", *hidden, classes, Default::default()),
                }))
            }
        };
        Model { spec: spec.clone(), classes, vs, net }
    }

    /// Logits `[batch, classes]` for pixels `[batch, 784]`; dropout is active only when `train`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let dropout = self.spec.dropout;
        match &self.net {
            Net::Mlp(layers) => {
                let mut h = xs.dropout(self.spec.input_dropout, train);
                for (i, layer) in layers.iter().enumerate() {
                    h = layer.forward_t(&h, train);
                    if i + 1 < layers.len() {
                        h = h.relu().dropout(dropout, train);
                    }
                }
                h
            }
            Net::Cnn(cnn) => xs
                .view([-1, 1, IMAGE_SIDE, IMAGE_SIDE])
                .apply(&cnn.conv1)
                .max_pool2d_default(2)
                .relu()
                .apply(&cnn.conv2)
                .max_pool2d_default(2)
                .relu()
                .flatten(1, -1)
                .apply(&cnn.fc1)
                .relu()
                .dropout(dropout, train)
                .apply(&cnn.fc2),
        }
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> i64 {
        self.vs.trainable_variables().iter().map(Tensor::numel).sum::<usize>() as i64
    }

    /// Applies the spec's max-norm constraint, if any: rescales each unit's incoming weights
    /// (a row of a linear weight, a filter of a convolution) to an L2 norm of at most the limit.
    pub fn apply_constraints(&self) {
        let Some(limit) = self.spec.max_norm else { return };
        let _guard = tch::no_grad_guard();
        for (name, mut weight) in self.vs.variables() {
            if name.ends_with(".weight") {
                let renormed = weight.renorm(2.0, 0, limit);
                weight.copy_(&renormed);
            }
        }
    }

    /// Device the weights are on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for text in [
            "mlp:1200x1200",
            "mlp:800x800:dropout=0.5,input-dropout=0.2,max-norm=15",
            "cnn:32x64",
            "cnn:16x32:hidden=128,dropout=0.25",
        ] {
            let spec: ModelSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        let spec: ModelSpec = "mlp:30x20".parse().unwrap();
        assert_eq!(spec.arch, Arch::Mlp { hidden: vec![30, 20] });
    }

    #[test]
    fn bad_specs_are_errors_that_quote_the_spec() {
        for bad in [
            "",
            "mlp",
            "mlp:",
            "mlp:0x10",
            "mlp:12xa",
            "rnn:10",
            "cnn:32",
            "mlp:10:dropout=1.5",
            "mlp:10:drop=0.1",
            "mlp:10:dropout",
        ] {
            let err = format!("{:#}", bad.parse::<ModelSpec>().unwrap_err());
            assert!(err.contains(&format!("'{bad}'")), "{bad}: {err}");
        }
    }

    #[test]
    fn parameter_counts_follow_the_layer_sizes() {
        let mlp = Model::new(&"mlp:1200x1200".parse().unwrap(), 10, Device::Cpu);
        assert_eq!(mlp.parameter_count(), 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10);
        let cnn = Model::new(&"cnn:32x64".parse().unwrap(), 10, Device::Cpu);
        let expected =
            (25 * 32 + 32) + (25 * 32 * 64 + 64) + (64 * 16 * 256 + 256) + (256 * 10 + 10);
        assert_eq!(cnn.parameter_count(), expected);
        let xs = Tensor::zeros([3, IMAGE_PIXELS], (tch::Kind::Float, Device::Cpu));
        assert_eq!(cnn.forward_t(&xs, false).size(), [3, 10]);
    }

    #[test]
    fn max_norm_caps_every_unit() {
        let model = Model::new(&"mlp:50:max-norm=0.5".parse().unwrap(), 10, Device::Cpu);
        let first = &model.vs.variables()["layer0.weight"];
        // tch's default init gives rows of norm about sqrt(784 / (3 * 784)) = 0.58 here.
        assert!(first.norm_scalaropt_dim(2, [1], false).max().double_value(&[]) > 0.5);
        model.apply_constraints();
        for (name, w) in model.vs.variables() {
            if name.ends_with(".weight") {
                let norms = w.norm_scalaropt_dim(2, [1], false);
                assert!(norms.max().double_value(&[]) <= 0.5 + 1e-6, "{name}");
            }
        }
    }
}
