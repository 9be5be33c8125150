//! `kd`: knowledge distillation (Hinton, Vinyals and Dean, 2015) in Rust over libtorch.
//!
//! A teacher is trained first ([`train::train_teacher`]); a small student is then trained to
//! match the teacher's outputs softened by a temperature, mixed with the hard-label loss by a
//! weight alpha ([`loss::distillation_loss`], [`train::distill`]). The pipeline follows the
//! modules: [`data`] (MNIST as tensors), [`models`] (teacher and student networks),
//! [`teacher`] (kd, TorchScript and ensemble teachers), [`loss`], [`optim`] (SGD whose state is
//! saved), [`train`], [`sweep`], [`checkpoint`], [`export`] (TorchScript), [`report`] (run
//! folder, CSVs, locks), [`interrupt`] (Ctrl-C), [`resume`] (`--resume`), [`preset`] (named
//! recipes of `kd run`), and [`cli`] with [`commands`] for the `kd` binary.

pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod data;
pub mod export;
pub mod interrupt;
pub mod loss;
pub mod models;
pub mod optim;
pub mod preset;
pub mod report;
pub mod resume;
pub mod sweep;
pub mod teacher;
pub mod train;
