//! Build script: makes every `kd` binary (and test binary) find libtorch by itself.
//!
//! `scripts/setup.sh` installs libtorch from the PyPI wheel and links it as `libtorch/` in the
//! repository; `.cargo/config.toml` hands that path to the build as `LIBTORCH`. Here we add an
//! rpath to its `lib` folder, so `kd` runs without `LD_LIBRARY_PATH`, and, when the wheel carries
//! CUDA, link `libtorch_cuda.so` with `--no-as-needed`: nothing in our code names a CUDA symbol,
//! so the linker would otherwise drop it and libtorch would see no GPU.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");

    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set: run scripts/setup.sh first");
        return;
    };
    let lib = PathBuf::from(libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);

    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());

    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
