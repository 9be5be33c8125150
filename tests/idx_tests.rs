//! The IDX reader on real MNIST files, renamed, gzipped and corrupted in a temporary folder.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use kd::data::{CLASSES, load_mnist};
use tch::{Device, Kind};

const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Copies the real test split (and a 1,000-sample cut of the training split) into `dir`,
/// naming each file by `rename` and gzipping when `gz`.
fn write_mnist(dir: &Path, rename: impl Fn(&str) -> String, gz: bool) {
    for name in FILES {
        let mut bytes = fs::read(common::mnist_dir().join(name)).unwrap();
        if name.starts_with("train") {
            bytes = cut(&bytes, 1000);
        }
        let target = dir.join(rename(name));
        if gz {
            let mut encoder = GzEncoder::new(
                fs::File::create(format!("{}.gz", target.display())).unwrap(),
                Compression::fast(),
            );
            encoder.write_all(&bytes).unwrap();
            encoder.finish().unwrap();
        } else {
            fs::write(target, bytes).unwrap();
        }
    }
}

/// The first `n` samples of an IDX file, with its count field rewritten.
fn cut(bytes: &[u8], n: u32) -> Vec<u8> {
    let ndims = bytes[3] as usize;
    let sample: usize = (1..ndims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .product();
    let header = 4 + 4 * ndims;
    let mut out = bytes[..header + n as usize * sample].to_vec();
    out[4..8].copy_from_slice(&n.to_be_bytes());
    out
}

fn dot_spelling(name: &str) -> String {
    let (stem, kind) = name.split_at(name.find("-idx").unwrap());
    format!("{stem}.{}", &kind[1..])
}

fn load_error(dir: &Path) -> String {
    format!("{:#}", load_mnist(dir, Device::Cpu, None).unwrap_err())
}

#[test]
fn both_spellings_raw_and_gzipped_give_the_same_data() {
    let mut loaded = vec![];
    for (rename, gz) in [
        (str::to_string as fn(&str) -> String, false),
        (dot_spelling, false),
        (str::to_string, true),
        (dot_spelling, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_mnist(dir.path(), rename, gz);
        loaded.push(load_mnist(dir.path(), Device::Cpu, None).unwrap());
    }
    let first = &loaded[0];
    assert_eq!(first.train.images.size(), [1000, 784]);
    assert_eq!(first.test.images.size(), [10000, 784]);
    // Known facts of MNIST: the first training label is 5, the first test label is 7, and the
    // test set holds 1,135 ones.
    assert_eq!(first.train.labels.int64_value(&[0]), 5);
    assert_eq!(first.test.labels.int64_value(&[0]), 7);
    assert_eq!(first.test.labels.eq(1).sum(Kind::Int64).int64_value(&[]), 1135);
    assert!(first.test.labels.max().int64_value(&[]) < CLASSES);
    let max = first.train.images.max().double_value(&[]);
    assert_eq!(max, 1.0, "pixels are scaled to [0, 1]");
    for other in &loaded[1..] {
        assert!(
            other.train.images.equal(&first.train.images)
                && other.test.labels.equal(&first.test.labels)
        );
    }
}

#[test]
fn train_limit_keeps_the_first_samples() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), str::to_string, false);
    let data = load_mnist(dir.path(), Device::Cpu, Some(10)).unwrap();
    let full = load_mnist(dir.path(), Device::Cpu, None).unwrap();
    assert_eq!(data.train.len(), 10);
    assert!(data.train.labels.equal(&full.train.labels.narrow(0, 0, 10)));
}

/// Writes the real files, then lets `damage` change one of them.
fn damaged(file: &str, damage: impl Fn(Vec<u8>) -> Vec<u8>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), str::to_string, false);
    let path = dir.path().join(file);
    fs::write(&path, damage(fs::read(&path).unwrap())).unwrap();
    dir
}

#[test]
fn a_truncated_file_is_an_error_naming_it() {
    let dir = damaged("t10k-images-idx3-ubyte", |b| b[..b.len() - 100].to_vec());
    let error = load_error(dir.path());
    assert!(error.contains("t10k-images-idx3-ubyte") && error.contains("truncated"), "{error}");
}

#[test]
fn a_wrong_magic_number_is_an_error_naming_it() {
    let dir = damaged("train-labels-idx1-ubyte", |mut b| {
        b[3] = 3;
        b
    });
    let error = load_error(dir.path());
    assert!(
        error.contains("train-labels-idx1-ubyte")
            && error.contains("magic number is 2051, expected 2049"),
        "{error}"
    );
}

#[test]
fn an_image_label_count_mismatch_is_an_error() {
    let dir = damaged("t10k-labels-idx1-ubyte", |b| cut(&b, 9999));
    let error = load_error(dir.path());
    assert!(error.contains("10000 images") && error.contains("9999 labels"), "{error}");
}

#[test]
fn a_label_out_of_range_is_an_error() {
    let dir = damaged("t10k-labels-idx1-ubyte", |mut b| {
        b[8] = 12;
        b
    });
    assert!(load_error(dir.path()).contains("label 12 is not a digit class"));
}

#[test]
fn a_corrupt_gzip_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), str::to_string, true);
    let path = dir.path().join("t10k-labels-idx1-ubyte.gz");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let error = load_error(dir.path());
    assert!(error.contains("t10k-labels-idx1-ubyte.gz"), "{error}");
}

#[test]
fn missing_or_empty_folders_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let error = load_error(dir.path());
    assert!(error.contains("no t10k-images file") && error.contains("scripts/setup.sh"), "{error}");
    let error = load_error(&dir.path().join("absent"));
    assert!(error.contains("does not exist"), "{error}");
}
