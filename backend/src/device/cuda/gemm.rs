//! The CUDA device's linear layers: cuBLAS GEMMs on the device's stream.
//!
//! Row-major `out[rows, n] = x[rows, k] · W[n, k]ᵀ` (Hugging Face's `Linear` layout) is,
//! read column-major, `outᵀ[n, rows] = W · xᵀ` with `W` seen as a column-major `[k, n]`
//! matrix: one GEMM with `transa = T` on the weight, `transb = N`, `m = n`, `n = rows`,
//! `k = k`, `lda = ldb = k`, `ldc = n` — no transposed copies.
//!
//! - f32 weights: `cublasSgemm` in `CUBLAS_DEFAULT_MATH`, which never rounds inputs to
//!   TF32 (only `CUBLAS_TF32_TENSOR_OP_MATH` or a `*_FAST_TF32` compute type would), so
//!   the f32 engine stays within rounding of the CPU reference.
//! - bf16/f16 weights: the activation is cast to the weight's dtype (the caller does
//!   that with the kernels crate's cast kernel), then `cublasGemmEx` with 16-bit A and
//!   B, an f32 C and `CUBLAS_COMPUTE_32F`: tensor cores, products exact, sums in f32.
//!   cudarc's `Gemm<T>` wants A, B and C of one type, hence the raw call.
//!
//! cuBLAS picks its algorithm per shape, so unlike the CPU GEMM a row's result may
//! change in the last bits with the number of rows in the batch.

use std::sync::Arc;

use cudarc::cublas::result::gemm_ex;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasMath_t, cublasOperation_t, cudaDataType,
};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::{bf16, f16};

use super::OpError;

/// A cuBLAS handle bound to the device's stream, with its own workspace.
#[derive(Debug)]
pub(super) struct Blas {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    /// Set on the handle so that no GEMM allocates one, which a CUDA graph capture
    /// forbids; 32 MiB is what NVIDIA recommends for Hopper (4 MiB before it).
    _workspace: CudaSlice<u8>,
}

/// Bytes of [`Blas`]'s workspace.
pub(super) const WORKSPACE_BYTES: usize = 32 << 20;

/// A 16-bit GEMM input type and its cuBLAS name.
pub(super) trait Half: cudarc::driver::DeviceRepr {
    const CUDA_TYPE: cudaDataType;
}

impl Half for bf16 {
    const CUDA_TYPE: cudaDataType = cudaDataType::CUDA_R_16BF;
}

impl Half for f16 {
    const CUDA_TYPE: cudaDataType = cudaDataType::CUDA_R_16F;
}

/// Dimensions of one `out = x · wᵀ`.
#[derive(Clone, Copy, Debug)]
pub(super) struct LinearShape {
    pub rows: usize,
    /// Input features (`k`).
    pub inp: usize,
    /// Output features (`n`).
    pub out: usize,
}

impl LinearShape {
    /// cuBLAS's `(m, n, k)` for this product.
    fn dims(self) -> Result<(i32, i32, i32), OpError> {
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| OpError::Shape(format!("{self:?} exceeds cuBLAS's int")))
        };
        Ok((int(self.out)?, int(self.rows)?, int(self.inp)?))
    }
}

impl Blas {
    pub fn new(stream: Arc<CudaStream>) -> Result<Self, OpError> {
        let blas = CudaBlas::new(Arc::clone(&stream))?;
        // SAFETY: the handle was just created and is valid; the mode is a plain enum value.
        unsafe {
            cudarc::cublas::sys::cublasSetMathMode(
                *blas.handle(),
                cublasMath_t::CUBLAS_DEFAULT_MATH,
            )
        }
        .result()?;
        // After `cublasSetStream` (in `CudaBlas::new`), which resets the workspace to
        // cuBLAS's default pool; nothing sets the stream again.
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
        let ptr = workspace.device_ptr(&stream).0;
        // SAFETY: `ptr` is a device allocation of WORKSPACE_BYTES on the handle's stream,
        // owned by the returned `Blas` as long as the handle (dropped first: field order).
        unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(
                *blas.handle(),
                ptr as *mut std::ffi::c_void,
                WORKSPACE_BYTES,
            )
        }
        .result()?;
        Ok(Blas { blas, stream, _workspace: workspace })
    }

    /// `out = x · wᵀ` in f32.
    pub fn linear_f32(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        s: LinearShape,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), OpError> {
        check_lens(x.len(), w.len(), out.len(), s)?;
        let (m, n, k) = s.dims()?;
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m,
            n,
            k,
            alpha: 1.0f32,
            lda: k,
            ldb: k,
            beta: 0.0f32,
            ldc: m,
        };
        // SAFETY: `check_lens` showed w holds n·k (= m·k here) values, x rows·k and out
        // rows·n, which is what the column-major [k, m]ᵀ · [k, n] → [m, n] product with
        // these leading dimensions reads and writes; all three live on this handle's stream.
        Ok(unsafe { self.blas.gemm(cfg, w, x, out) }?)
    }

    /// `out = x16 · wᵀ` with 16-bit inputs, f32 output and f32 accumulation. `x16`
    /// may be longer than `rows · inp` (a reused scratch buffer); only its prefix is read.
    pub fn linear_half<T: Half>(
        &self,
        x16: &CudaSlice<T>,
        w: &CudaSlice<T>,
        s: LinearShape,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), OpError> {
        check_lens(x16.len().min(s.rows * s.inp), w.len(), out.len(), s)?;
        let (m, n, k) = s.dims()?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (w_ptr, _w_done) = w.device_ptr(&self.stream);
        let (x_ptr, _x_done) = x16.device_ptr(&self.stream);
        let (out_ptr, _out_done) = out.device_ptr_mut(&self.stream);
        // SAFETY: lengths checked as in `linear_f32`; alpha and beta are host f32s, as
        // CUBLAS_COMPUTE_32F with the default (host) pointer mode requires; the pointers
        // stay valid until the `_done` guards drop, after the GEMM is enqueued on the
        // stream that owns every buffer. (16BF|16F, same, 32F, COMPUTE_32F) is one of
        // cublasGemmEx's supported type combinations.
        unsafe {
            gemm_ex(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                k,
                (&alpha as *const f32).cast(),
                w_ptr as *const _,
                T::CUDA_TYPE,
                k,
                x_ptr as *const _,
                T::CUDA_TYPE,
                k,
                (&beta as *const f32).cast(),
                out_ptr as *mut _,
                cudaDataType::CUDA_R_32F,
                m,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }?;
        Ok(())
    }
}

/// The buffers hold exactly what the GEMM touches (a mismatch would read or write out
/// of bounds on the device, so this is checked in release builds too).
fn check_lens(x: usize, w: usize, out: usize, s: LinearShape) -> Result<(), OpError> {
    if x == s.rows * s.inp && w == s.out * s.inp && out == s.rows * s.out {
        Ok(())
    } else {
        Err(OpError::Shape(format!(
            "linear {s:?}: x has {x} values, the weight {w}, the output {out}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_must_fit_the_product_exactly() {
        let s = LinearShape { rows: 3, inp: 4, out: 5 };
        assert!(check_lens(12, 20, 15, s).is_ok());
        assert!(check_lens(11, 20, 15, s).is_err());
        assert!(check_lens(12, 21, 15, s).is_err());
        assert!(check_lens(12, 20, 16, s).is_err());
        assert_eq!(s.dims().unwrap(), (5, 3, 4));
        assert!(LinearShape { rows: 1 << 31, inp: 1, out: 1 }.dims().is_err());
    }
}
