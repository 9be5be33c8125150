//! Ctrl-C (SIGINT): the first press asks training to stop at the next step, so the phase ends
//! with its last whole epoch saved and the run can be continued with `--resume`; a second press
//! quits at once (what is on disk is still whole: every file is written by a rename).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_STATUS: u8 = 130;

/// Installs the Ctrl-C handler. Failing to install it is not fatal: Ctrl-C then kills the
/// process, which loses nothing but the epoch in progress.
pub fn install() {
    let result = ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: quitting at once");
            std::process::exit(EXIT_STATUS.into());
        }
        eprintln!("\ninterrupted: stopping at the next step (Ctrl-C again quits at once)");
    });
    if let Err(error) = result {
        log::warn!("Ctrl-C will kill kd without a message: {error}");
    }
}

/// Whether Ctrl-C has been pressed.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// The error of a phase stopped by Ctrl-C inside `epoch`: that epoch is dropped, the ones
/// before it are saved.
#[derive(Debug)]
pub struct Interrupted {
    pub phase: &'static str,
    pub epoch: i64,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "interrupted by Ctrl-C in epoch {} of the {} phase", self.epoch, self.phase)
    }
}

impl std::error::Error for Interrupted {}

/// Whether `error` comes from Ctrl-C.
pub fn is_interrupt(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<Interrupted>())
}
