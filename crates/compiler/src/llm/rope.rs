//! Rotary position embedding tables: the per-position `cos` and `sin` of the "rotate half"
//! convention, with the frequency scalings of [`RopeScaling`], in f64.
//!
//! The base frequencies are `θ_j = theta^(−2j/D)` for `j < D/2`; a position `p` rotates pair
//! `j` by `p·θ_j`. Scalings (as `transformers` computes them):
//!
//! * `linear`: `θ_j / factor`.
//! * `dynamic` (NTK): for a sequence of `n > original` tokens the base becomes
//!   `theta · (factor·n/original − (factor − 1))^(D/(D−2))`; `n` is the length of the sequence
//!   the table is made for (the largest position + 1).
//! * `llama3`: wavelengths `2π/θ_j` above `original/low_freq_factor` are divided by `factor`,
//!   those below `original/high_freq_factor` kept, and those between interpolated.
//! * `yarn`: `θ_j` blends `θ_j` and `θ_j/factor` by a linear ramp between the correction
//!   dimensions of `beta_fast` and `beta_slow`; `cos` and `sin` are scaled by the attention
//!   factor (`0.1·ln(factor) + 1` unless given).

use super::config::{LlmConfig, RopeScaling};

/// `cos` and `sin` tables `[positions, D/2]`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTables {
    /// `cos(p·θ_j)` (times the YaRN attention factor).
    pub cos: Vec<f64>,
    /// `sin(p·θ_j)` (times the YaRN attention factor).
    pub sin: Vec<f64>,
    /// `D/2`.
    pub half: usize,
}

/// The inverse frequencies `θ_j` of `cfg` for a sequence of `seq_len` tokens (only dynamic
/// scaling depends on it).
pub fn inv_freq(cfg: &LlmConfig, seq_len: u64) -> (Vec<f64>, f64) {
    let d = f64::from(cfg.head_dim);
    let half = cfg.head_dim as usize / 2;
    let base = cfg.rope_theta;
    let plain = |base: f64| (0..half).map(|j| base.powf(-(2.0 * j as f64) / d)).collect::<Vec<f64>>();
    match cfg.rope_scaling.as_ref() {
        None => (plain(base), 1.0),
        Some(RopeScaling::Linear { factor }) => (plain(base).into_iter().map(|f| f / factor).collect(), 1.0),
        Some(RopeScaling::Dynamic { factor, original_max_position_embeddings }) => {
            let original = original_max_position_embeddings.unwrap_or(cfg.max_position_embeddings) as f64;
            let n = (seq_len as f64).max(original);
            let scaled = base * (factor * n / original - (factor - 1.0)).powf(d / (d - 2.0));
            (plain(scaled), 1.0)
        }
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let original = *original_max_position_embeddings as f64;
            let (low_wavelen, high_wavelen) = (original / low_freq_factor, original / high_freq_factor);
            let freqs = plain(base)
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect();
            (freqs, 1.0)
        }
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
        }) => {
            let original = original_max_position_embeddings.unwrap_or(cfg.max_position_embeddings) as f64;
            let correction =
                |rotations: f64| d * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
            let low = correction(*beta_fast).floor().max(0.0);
            let mut high = correction(*beta_slow).ceil().min(d - 1.0);
            if high <= low {
                high = low + 0.001;
            }
            let freqs = plain(base)
                .into_iter()
                .enumerate()
                .map(|(j, f)| {
                    let ramp = ((j as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation = 1.0 - ramp;
                    f / factor * (1.0 - extrapolation) + f * extrapolation
                })
                .collect();
            let mscale = attention_factor.unwrap_or(if *factor > 1.0 { 0.1 * factor.ln() + 1.0 } else { 1.0 });
            (freqs, mscale)
        }
    }
}

/// The tables for `positions` (one row each) of a sequence of `seq_len` tokens.
pub fn rope_tables(cfg: &LlmConfig, positions: &[u64], seq_len: u64) -> RopeTables {
    let (freqs, mscale) = inv_freq(cfg, seq_len);
    let half = freqs.len();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for f in &freqs {
            let angle = p as f64 * f;
            cos.push(angle.cos() * mscale);
            sin.push(angle.sin() * mscale);
        }
    }
    RopeTables { cos, sin, half }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str) -> LlmConfig {
        match LlmConfig::bundled(name) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn plain_rope_starts_at_theta_zero() {
        let c = cfg("mistral-7b");
        let (f, m) = inv_freq(&c, 1);
        assert_eq!((f.len(), m), (64, 1.0));
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 10000f64.powf(-2.0 / 128.0)).abs() < 1e-15);
        let t = rope_tables(&c, &[0, 3], 4);
        assert!(t.cos[..64].iter().all(|&v| v == 1.0) && t.sin[..64].iter().all(|&v| v == 0.0));
        assert!((t.cos[64] - 3f64.cos()).abs() < 1e-15);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let c = cfg("llama-3.1-8b");
        let (f, _) = inv_freq(&c, 1);
        let plain: Vec<f64> = (0..64).map(|j| 500000f64.powf(-(2.0 * j as f64) / 128.0)).collect();
        assert_eq!(f[0], plain[0], "short wavelengths are kept");
        assert!((f[63] - plain[63] / 8.0).abs() < 1e-18, "long wavelengths are divided by the factor");
        // Somewhere in between they are interpolated.
        assert!(f.iter().zip(&plain).any(|(a, b)| *a < *b && *a > b / 8.0));
    }
}
