//! Rotary position embedding frequencies, computed exactly as transformers does
//! (in f32, `rotate_half` layout: dimension `i` pairs with `i + head_dim/2`).
//!
//! Scaling variants only change the inverse-frequency table, so every device applies
//! one rotation kernel: `x_i' = x_i cos - x_{i+h} sin`, `x_{i+h}' = x_{i+h} cos + x_i sin`
//! with `cos/sin(position * inv_freq[i])`.

use crate::config::{RopeConfig, RopeScaling};

/// The per-pair inverse frequencies, `head_dim / 2` of them.
pub fn inv_freq(rope: &RopeConfig, head_dim: usize) -> Vec<f32> {
    let base: Vec<f32> = (0..head_dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            1.0 / rope.theta.powf(exponent)
        })
        .collect();
    match rope.scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position,
        } => {
            let old = original_max_position as f32;
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_freq_wavelen { f / factor } else { f };
                    if wavelen < high_freq_wavelen || wavelen > low_freq_wavelen {
                        scaled
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    }
                })
                .collect()
        }
    }
}

/// `cos` and `sin` of `position * inv_freq[i]` for each position, row-major
/// `[positions.len(), inv_freq.len()]`.
pub fn cos_sin(inv_freq: &[f32], positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let n = positions.len() * inv_freq.len();
    let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for &p in positions {
        for &f in inv_freq {
            // One f32 rounding of the product, as transformers' f32 matmul does.
            let angle = (p as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_frequencies() {
        let f = inv_freq(&RopeConfig { theta: 10000.0, scaling: RopeScaling::Default }, 8);
        let want = [1.0, 0.1, 0.01, 0.001];
        for (a, b) in f.iter().zip(want) {
            assert!((a - b).abs() <= b * 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn llama3_keeps_high_frequencies_and_divides_low_ones() {
        let rope = RopeConfig {
            theta: 500000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position: 8192,
            },
        };
        let plain = inv_freq(&RopeConfig { theta: 500000.0, scaling: RopeScaling::Default }, 128);
        let scaled = inv_freq(&rope, 128);
        assert_eq!(scaled[0], plain[0]);
        assert_eq!(scaled[63], plain[63] / 8.0);
        let mid = (0..64).filter(|&i| scaled[i] != plain[i] && scaled[i] != plain[i] / 8.0);
        assert!(mid.count() > 0, "some frequencies are smoothed");
    }
}
