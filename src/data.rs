//! MNIST as tensors on the training device: the IDX reader, batch order and input jitter.
//!
//! The reader is ours rather than `tch::vision::mnist`, because users' folders come with either
//! file spelling (`train-images-idx3-ubyte`, `train-images.idx3-ubyte`), raw or gzipped, and every
//! defect must be an error that names the file. Once loaded, the whole data set lives on the
//! device; an epoch is a random permutation of indices on that device, so no per-sample Rust
//! code runs while training.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use flate2::read::GzDecoder;
use tch::{Device, Kind, Tensor};

/// Side of an MNIST image in pixels.
pub const IMAGE_SIDE: i64 = 28;
/// Pixels per image, the width of the flat input every model takes.
pub const IMAGE_PIXELS: i64 = IMAGE_SIDE * IMAGE_SIDE;
/// Number of digit classes.
pub const CLASSES: i64 = 10;

const IMAGES_MAGIC: u32 = 2051;
const LABELS_MAGIC: u32 = 2049;

/// Images and labels of one split, on one device.
#[derive(Debug)]
pub struct Split {
    /// `[n, 784]` float pixels scaled to [0, 1].
    pub images: Tensor,
    /// `[n]` int64 class indices.
    pub labels: Tensor,
}

impl Split {
    /// Number of samples.
    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    /// True when the split holds no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The samples at `index` (a `[b]` int64 tensor on the split's device).
    pub fn batch(&self, index: &Tensor) -> (Tensor, Tensor) {
        (self.images.index_select(0, index), self.labels.index_select(0, index))
    }

    /// A second handle on the same tensors (no copy), for another thread.
    pub fn shallow_clone(&self) -> Split {
        Split { images: self.images.shallow_clone(), labels: self.labels.shallow_clone() }
    }

    /// The first `n` samples (all of them when `n` is larger).
    pub fn take(&self, n: i64) -> Split {
        let n = n.min(self.len());
        Split { images: self.images.narrow(0, 0, n), labels: self.labels.narrow(0, 0, n) }
    }

    /// The last `n` samples (all of them when `n` is larger).
    pub fn last(&self, n: i64) -> Split {
        let n = n.min(self.len());
        let start = self.len() - n;
        Split { images: self.images.narrow(0, start, n), labels: self.labels.narrow(0, start, n) }
    }

    /// The samples whose label is not `class`, in their order.
    pub fn without_class(&self, class: i64) -> Split {
        let keep = self.labels.ne(class).nonzero().squeeze_dim(1);
        Split {
            images: self.images.index_select(0, &keep),
            labels: self.labels.index_select(0, &keep),
        }
    }
}

/// The MNIST training and test splits.
#[derive(Debug)]
pub struct Mnist {
    pub train: Split,
    pub test: Split,
}

/// A parsed IDX file: its dimensions and its unsigned-byte payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Loads MNIST from `dir` onto `device`, keeping the first `train_limit` training samples when
/// given. The four files may be raw or `.gz`, in either spelling.
pub fn load_mnist(dir: &Path, device: Device, train_limit: Option<i64>) -> Result<Mnist> {
    let test = load_test_split(dir, device)?;
    let train = load_split(dir, "train", device)?;
    let train = match train_limit {
        Some(n) => train.take(n),
        None => train,
    };
    Ok(Mnist { train, test })
}

/// Loads the MNIST test split alone from `dir` onto `device`.
pub fn load_test_split(dir: &Path, device: Device) -> Result<Split> {
    ensure!(dir.is_dir(), "data folder {} does not exist (run scripts/setup.sh)", dir.display());
    load_split(dir, "t10k", device)
}

fn load_split(dir: &Path, prefix: &str, device: Device) -> Result<Split> {
    let images_path = find_idx_file(dir, &format!("{prefix}-images"), "idx3")?;
    let labels_path = find_idx_file(dir, &format!("{prefix}-labels"), "idx1")?;
    let images = read_idx(&images_path, IMAGES_MAGIC)?;
    let labels = read_idx(&labels_path, LABELS_MAGIC)?;

    ensure!(
        images.dims[1..] == [IMAGE_SIDE as usize, IMAGE_SIDE as usize],
        "{}: images are {:?}, expected 28 x 28",
        images_path.display(),
        &images.dims[1..]
    );
    ensure!(
        images.dims[0] == labels.dims[0],
        "{} holds {} images but {} holds {} labels",
        images_path.display(),
        images.dims[0],
        labels_path.display(),
        labels.dims[0]
    );
    if let Some(bad) = labels.data.iter().find(|&&l| i64::from(l) >= CLASSES) {
        bail!("{}: label {bad} is not a digit class (0 to 9)", labels_path.display());
    }

    let n = images.dims[0] as i64;
    let images = Tensor::from_slice(&images.data).view([n, IMAGE_PIXELS]).to_device(device);
    let labels = Tensor::from_slice(&labels.data).to_device(device).to_kind(Kind::Int64);
    Ok(Split { images: images.to_kind(Kind::Float) / 255.0, labels })
}

/// Finds `<stem>-<kind>-ubyte` or `<stem>.<kind>-ubyte`, raw or with `.gz`, in `dir`.
pub fn find_idx_file(dir: &Path, stem: &str, kind: &str) -> Result<PathBuf> {
    let names = [format!("{stem}-{kind}-ubyte"), format!("{stem}.{kind}-ubyte")];
    let candidates: Vec<PathBuf> =
        names.iter().flat_map(|name| [dir.join(name), dir.join(format!("{name}.gz"))]).collect();
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "no {stem} file in {}: looked for {}, raw or with .gz \
             (run scripts/setup.sh to fetch MNIST)",
            dir.display(),
            names.join(" or ")
        )
    })
}

/// Reads an unsigned-byte IDX file (raw, or gzipped when the name ends in `.gz`) and checks its
/// magic number against `magic`, its dimensions and its length.
pub fn read_idx(path: &Path, magic: u32) -> Result<Idx> {
    let bytes = read_maybe_gz(path)?;
    let idx = parse_idx(&bytes, magic)
        .with_context(|| format!("{} is not a valid IDX file", path.display()))?;
    log::info!("read {}: dimensions {:?}", path.display(), idx.dims);
    Ok(idx)
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    let gzipped = path.extension().is_some_and(|e| e == "gz");
    let read = if gzipped {
        GzDecoder::new(file).read_to_end(&mut bytes)
    } else {
        file.read_to_end(&mut bytes)
    };
    read.with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

/// Parses IDX bytes: a big-endian magic number (0x0000_08_NN: unsigned bytes, NN dimensions),
/// NN big-endian dimension sizes, then exactly their product of bytes.
pub fn parse_idx(bytes: &[u8], magic: u32) -> Result<Idx> {
    ensure!(bytes.len() >= 4, "file is {} bytes long, too short for a header", bytes.len());
    let found = u32::from_be_bytes(bytes[..4].try_into().unwrap());
    ensure!(
        found == magic,
        "magic number is {found}, expected {magic} ({})",
        if magic == IMAGES_MAGIC { "images" } else { "labels" }
    );

    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    ensure!(bytes.len() >= header, "file ends inside its header ({} bytes)", bytes.len());
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()) as usize)
        .collect();

    let expected = dims.iter().product::<usize>() + header;
    ensure!(
        bytes.len() == expected,
        "file is {} bytes but its header {:?} implies {expected} (truncated or padded)",
        bytes.len(),
        dims
    );
    ensure!(dims[0] > 0, "file holds no sample");
    Ok(Idx { dims, data: bytes[header..].to_vec() })
}

/// A random order of `n` sample indices, cut into batches of `batch_size` (the last may be
/// smaller), on `device`. Draws from libtorch's generator, so `tch::manual_seed` fixes it.
pub fn epoch_batches(n: i64, batch_size: i64, device: Device) -> Vec<Tensor> {
    Tensor::randperm(n, (Kind::Int64, device)).split(batch_size, 0)
}

/// Shifts each image of a `[b, 784]` batch by its own random offset of up to `pixels` in each
/// direction, filling with zeros (the paper's teacher jitter). Runs on the batch's device with
/// two gathers; `pixels == 0` returns the batch unchanged.
pub fn jitter(images: &Tensor, pixels: i64) -> Tensor {
    if pixels == 0 {
        return images.shallow_clone();
    }
    let b = images.size()[0];
    let device = images.device();
    let padded_side = IMAGE_SIDE + 2 * pixels;
    let padded = images.view([b, IMAGE_SIDE, IMAGE_SIDE]).constant_pad_nd([pixels; 4]);

    let offsets = Tensor::randint(2 * pixels + 1, [2, b, 1], (Kind::Int64, device));
    let base = Tensor::arange(IMAGE_SIDE, (Kind::Int64, device)).view([1, IMAGE_SIDE]);
    let rows = (&base + offsets.get(0)).unsqueeze(2).expand([b, IMAGE_SIDE, padded_side], false);
    let cols = (&base + offsets.get(1)).unsqueeze(1).expand([b, IMAGE_SIDE, IMAGE_SIDE], false);

    padded.gather(1, &rows, false).gather(2, &cols, false).view([b, IMAGE_PIXELS])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx_bytes(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut bytes = magic.to_be_bytes().to_vec();
        dims.iter().for_each(|d| bytes.extend(d.to_be_bytes()));
        bytes.extend(payload);
        bytes
    }

    #[test]
    fn parses_a_well_formed_label_file() {
        let idx = parse_idx(&idx_bytes(LABELS_MAGIC, &[3], &[7, 0, 9]), LABELS_MAGIC).unwrap();
        assert_eq!(idx, Idx { dims: vec![3], data: vec![7, 0, 9] });
    }

    #[test]
    fn rejects_wrong_magic_truncation_and_padding() {
        let wrong = parse_idx(&idx_bytes(LABELS_MAGIC, &[3], &[1, 2, 3]), IMAGES_MAGIC);
        assert!(format!("{:#}", wrong.unwrap_err()).contains("magic number is 2049"));
        let short = parse_idx(&idx_bytes(LABELS_MAGIC, &[3], &[1, 2]), LABELS_MAGIC);
        assert!(format!("{:#}", short.unwrap_err()).contains("is 10 bytes but"));
        let long = parse_idx(&idx_bytes(LABELS_MAGIC, &[3], &[1, 2, 3, 4]), LABELS_MAGIC);
        assert!(format!("{:#}", long.unwrap_err()).contains("truncated or padded"));
        let header = parse_idx(&LABELS_MAGIC.to_be_bytes(), LABELS_MAGIC);
        assert!(format!("{:#}", header.unwrap_err()).contains("inside its header"));
    }

    #[test]
    fn jitter_moves_a_single_pixel_within_range_and_keeps_its_value() {
        tch::manual_seed(3);
        let mut image = vec![0f32; IMAGE_PIXELS as usize];
        image[(14 * IMAGE_SIDE + 14) as usize] = 1.0;
        let batch = Tensor::from_slice(&image).view([1, IMAGE_PIXELS]).repeat([64, 1]);
        let moved = jitter(&batch, 2);
        // Every image still holds exactly one lit pixel, within 2 rows and 2 columns of (14, 14).
        assert_eq!(moved.sum(Kind::Float).double_value(&[]), 64.0);
        let at = moved.argmax(1, false);
        let (rows, cols) = (at.divide_scalar_mode(IMAGE_SIDE, "floor"), at.remainder(IMAGE_SIDE));
        assert!(rows.min().int64_value(&[]) >= 12 && rows.max().int64_value(&[]) <= 16);
        assert!(cols.min().int64_value(&[]) >= 12 && cols.max().int64_value(&[]) <= 16);
        // And not all images moved the same way.
        assert!(at.unique_dim(0, false, false, false).0.size()[0] > 1);
    }
}
