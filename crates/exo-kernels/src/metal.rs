//! Apple GPUs through candle's Metal backend: a weight matrix kept on the device in its GGUF
//! blocks, multiplied by candle's quantized Metal kernels.
//!
//! A [`crate::Matrix`] given a [`MetalMatrix`] ([`crate::Matrix::offload`]) sends its products
//! there; everything else in the forward pass stays on the CPU. Each product copies its
//! activations in and its outputs back (the CPU and GPU share memory on Apple silicon, so
//! these are plain copies) and waits for the result.

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use exo_formats::GgmlType;

use crate::KernelError;

/// A Metal device, for [`MetalMatrix::new`].
pub struct MetalDevice {
    dev: Device,
}

impl MetalDevice {
    /// Opens Metal device `ordinal`.
    pub fn new(ordinal: usize) -> Result<Self, KernelError> {
        let dev = Device::new_metal(ordinal).map_err(|e| KernelError::Metal(format!("opening metal:{ordinal}: {e}")))?;
        Ok(Self { dev })
    }
}

/// A `rows` × `cols` weight matrix on a Metal device.
pub struct MetalMatrix {
    name: String,
    rows: usize,
    cols: usize,
    mm: QMatMul,
    dev: Device,
}

/// candle's name for the ggml types its Metal kernels multiply.
fn candle_type(ty: GgmlType) -> Option<GgmlDType> {
    use GgmlType as G;
    Some(match ty {
        G::F32 => GgmlDType::F32,
        G::F16 => GgmlDType::F16,
        G::BF16 => GgmlDType::BF16,
        G::Q4_0 => GgmlDType::Q4_0,
        G::Q4_1 => GgmlDType::Q4_1,
        G::Q5_0 => GgmlDType::Q5_0,
        G::Q5_1 => GgmlDType::Q5_1,
        G::Q8_0 => GgmlDType::Q8_0,
        G::Q2K => GgmlDType::Q2K,
        G::Q3K => GgmlDType::Q3K,
        G::Q4K => GgmlDType::Q4K,
        G::Q5K => GgmlDType::Q5K,
        G::Q6K => GgmlDType::Q6K,
        G::Q8K => GgmlDType::Q8K,
        _ => return None,
    })
}

impl MetalMatrix {
    /// Whether [`MetalMatrix::new`] takes weights of type `ty`.
    pub fn supported(ty: GgmlType) -> bool {
        candle_type(ty).is_some()
    }

    /// Uploads `bytes` (GGUF blocks of type `ty`, `rows` rows of `cols`) to `dev`; `name` names
    /// the tensor in errors.
    pub fn new(dev: &MetalDevice, name: &str, ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, KernelError> {
        let err = |e: candle_core::Error| KernelError::Metal(format!("uploading '{name}': {e}"));
        let dtype = candle_type(ty).ok_or_else(|| KernelError::Metal(format!("tensor '{name}': candle has no Metal kernel for {}", ty.name())))?;
        if ty.row_bytes(cols).map(|r| r * rows) != Some(bytes.len()) {
            return Err(KernelError::Metal(format!("tensor '{name}': {} bytes for {rows}x{cols} {}", bytes.len(), ty.name())));
        }
        let storage = QStorage::from_data(std::borrow::Cow::Borrowed(bytes), &dev.dev, dtype).map_err(err)?;
        let qt = QTensor::new(storage, (rows, cols)).map_err(err)?;
        let mm = QMatMul::from_qtensor(qt).map_err(err)?;
        Ok(Self { name: name.to_string(), rows, cols, mm, dev: dev.dev.clone() })
    }

    /// `out[i][r] = Σ_c x[i][c] · W[r][c]` for `m` rows of activations, as
    /// [`crate::Matrix::matmul`].
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), KernelError> {
        let err = |e: candle_core::Error| KernelError::Metal(format!("product with '{}': {e}", self.name));
        let xs = Tensor::from_slice(x, (m, self.cols), &self.dev).map_err(err)?;
        let ys = self.mm.forward(&xs).map_err(err)?.flatten_all().map_err(err)?.to_vec1::<f32>().map_err(err)?;
        if ys.len() != m * self.rows {
            return Err(KernelError::Metal(format!("product with '{}': {} outputs, expected {}", self.name, ys.len(), m * self.rows)));
        }
        out.copy_from_slice(&ys);
        Ok(())
    }
}
