//! The GPU's memory: how much is free ([`Cuda::mem_get_info`], what the KV cache is sized
//! from, `runner::load`) and how fast it moves ([`Cuda::copy_bandwidth`], the roofline of
//! the benchmarks).

use super::Cuda;
use crate::device::DeviceError;
use crate::error::LoadError;

impl Cuda {
    /// `(free, total)` device memory in bytes, once queued work is done (freed buffers
    /// return to the driver when the stream synchronises).
    pub fn mem_get_info(&self) -> Result<(usize, usize), DeviceError> {
        let cuda = |e| self.error(format!("reading free memory: {e}"));
        self.stream.synchronize().map_err(cuda)?;
        self.ctx.mem_get_info().map_err(cuda)
    }

    /// Device memory bandwidth in bytes per second, measured as the best of `reps`
    /// device-to-device copies of `bytes` (each reads and writes `bytes`): the roofline a
    /// decode step's weight and KV reads are held against.
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64, LoadError> {
        let cuda = |e| LoadError::Other(format!("measuring bandwidth on {}: {e}", self.gpu_name));
        let src = self.stream.alloc_zeros::<u8>(bytes).map_err(cuda)?;
        let mut dst = self.stream.alloc_zeros::<u8>(bytes).map_err(cuda)?;
        let mut best = f64::MAX;
        // One untimed copy first (clocks up, pages mapped).
        for rep in 0..=reps.max(1) {
            self.stream.synchronize().map_err(cuda)?;
            let t = std::time::Instant::now();
            self.stream.memcpy_dtod(&src, &mut dst).map_err(cuda)?;
            self.stream.synchronize().map_err(cuda)?;
            if rep > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        Ok(2.0 * bytes as f64 / best)
    }
}
