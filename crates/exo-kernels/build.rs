//! With the `cuda` feature, compiles the kernels in src/cuda/*.cu to PTX with nvcc.
//!
//! PTX is made at build time rather than with NVRTC at run time so that a kernel that does not
//! compile fails the build, and a machine running exo needs only the NVIDIA driver (which JIT-
//! compiles PTX once and caches it), not the NVRTC library. The target is sm_90 (H100/H200)
//! unless `CUDA_COMPUTE_CAP` names another (e.g. 89).

use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["matvec", "layer"];

fn main() {
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=CUDA_ROOT");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-changed=src/cuda");
    let nvcc = match std::env::var_os("CUDA_ROOT") {
        Some(root) => PathBuf::from(root).join("bin").join("nvcc"),
        None => PathBuf::from("nvcc"),
    };
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in KERNELS {
        let src = format!("src/cuda/{name}.cu");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=sm_{cap}"), "-o"])
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("the cuda feature needs nvcc: running {} failed ({e}); set CUDA_ROOT to a CUDA toolkit", nvcc.display()));
        if !status.success() {
            panic!("nvcc failed on {src} ({status})");
        }
    }
}
