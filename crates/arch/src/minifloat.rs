//! Bit-exact conversion between `f32` and small binary floating-point formats
//! (fp8 e4m3 / e5m2), with round-to-nearest-even or stochastic rounding and
//! saturation on overflow.

use crate::rng::SplitMix64;

/// Geometry of a small float format.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MiniFormat {
    pub man_bits: u32,
    pub bias: i32,
    /// Largest finite magnitude.
    pub max_finite: f64,
    /// Encoding of a positive NaN.
    pub nan: u8,
    /// Encoding of +inf, if the format has one.
    pub inf: Option<u8>,
}

/// OCP FP8 E4M3 ("e4m3fn"): no infinities, one NaN pattern per sign, max 448.
pub(crate) const E4M3: MiniFormat = MiniFormat { man_bits: 3, bias: 7, max_finite: 448.0, nan: 0x7f, inf: None };
/// OCP FP8 E5M2: IEEE-like with infinities, max 57344.
pub(crate) const E5M2: MiniFormat =
    MiniFormat { man_bits: 2, bias: 15, max_finite: 57344.0, nan: 0x7f, inf: Some(0x7c) };

impl MiniFormat {
    fn emin(&self) -> i32 {
        1 - self.bias
    }

    /// Decodes the 8-bit pattern `bits`.
    pub fn decode(&self, bits: u8) -> f32 {
        let sign = if bits & 0x80 != 0 { -1.0f64 } else { 1.0 };
        let mag = bits & 0x7f;
        if mag == self.nan || (self.inf.is_some() && mag > self.inf.unwrap_or(0)) {
            return f32::NAN;
        }
        if Some(mag) == self.inf {
            return (sign * f64::INFINITY) as f32;
        }
        let exp_field = (mag >> self.man_bits) as i32;
        let man = (mag & ((1 << self.man_bits) - 1)) as f64;
        let scale = (1u32 << self.man_bits) as f64;
        let value = if exp_field == 0 {
            man / scale * 2f64.powi(self.emin())
        } else {
            (1.0 + man / scale) * 2f64.powi(exp_field - self.bias)
        };
        (sign * value) as f32
    }

    /// Encodes `x`, rounding to a representable value (RNE, or stochastic when
    /// `rng` is given) and saturating finite overflow to ±max.
    pub fn encode(&self, x: f32, rng: Option<&mut SplitMix64>) -> u8 {
        let sign_bit = if x.is_sign_negative() { 0x80u8 } else { 0 };
        if x.is_nan() {
            return self.nan | sign_bit;
        }
        if x.is_infinite() {
            return match self.inf {
                Some(inf) => inf | sign_bit,
                None => self.encode_magnitude(self.max_finite) | sign_bit,
            };
        }
        let a = (x as f64).abs();
        if a == 0.0 {
            return sign_bit;
        }
        // Quantum of the binade holding `a` (subnormal binades share emin's).
        let e = (a.log2().floor() as i32).max(self.emin());
        let quantum = 2f64.powi(e - self.man_bits as i32);
        let q = a / quantum;
        let n = match rng {
            None => q.round_ties_even(),
            Some(rng) => (q + rng.next_f64()).floor(),
        };
        let rounded = n * quantum;
        if rounded > self.max_finite {
            return self.encode_magnitude(self.max_finite) | sign_bit;
        }
        self.encode_magnitude(rounded) | sign_bit
    }

    /// Encodes an exactly representable non-negative magnitude.
    fn encode_magnitude(&self, v: f64) -> u8 {
        if v == 0.0 {
            return 0;
        }
        let e = v.log2().floor() as i32;
        if e < self.emin() {
            let m = v / 2f64.powi(self.emin() - self.man_bits as i32);
            return m as u8;
        }
        let m = v / 2f64.powi(e - self.man_bits as i32) - (1u32 << self.man_bits) as f64;
        (((e + self.bias) as u8) << self.man_bits) | m as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_e4m3_pattern_round_trips() {
        for bits in 0..=255u8 {
            let v = E4M3.decode(bits);
            if v.is_nan() {
                assert_eq!(bits & 0x7f, 0x7f);
                continue;
            }
            assert_eq!(E4M3.encode(v, None), bits, "pattern {bits:#x} value {v}");
        }
    }

    #[test]
    fn every_e5m2_pattern_round_trips() {
        for bits in 0..=255u8 {
            let v = E5M2.decode(bits);
            if v.is_nan() {
                continue;
            }
            assert_eq!(E5M2.encode(v, None), bits, "pattern {bits:#x} value {v}");
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(E4M3.decode(0x7e), 448.0);
        assert_eq!(E4M3.decode(0x01), 2f32.powi(-9));
        assert_eq!(E5M2.decode(0x7b), 57344.0);
        assert_eq!(E5M2.decode(0x01), 2f32.powi(-16));
        assert_eq!(E5M2.decode(0x7c), f32::INFINITY);
    }

    #[test]
    fn saturation_and_ties() {
        assert_eq!(E4M3.decode(E4M3.encode(1e6, None)), 448.0);
        assert_eq!(E4M3.decode(E4M3.encode(-500.0, None)), -448.0);
        assert_eq!(E4M3.decode(E4M3.encode(f32::INFINITY, None)), 448.0);
        assert_eq!(E5M2.decode(E5M2.encode(1e9, None)), 57344.0);
        assert_eq!(E5M2.decode(E5M2.encode(f32::NEG_INFINITY, None)), f32::NEG_INFINITY);
        // 1.0625 lies halfway between 1.0 and 1.125 in e4m3: ties to even (1.0).
        assert_eq!(E4M3.decode(E4M3.encode(1.0625, None)), 1.0);
        // 1.1875 lies halfway between 1.125 and 1.25: even mantissa is 1.25.
        assert_eq!(E4M3.decode(E4M3.encode(1.1875, None)), 1.25);
        // Smallest subnormal halfway case rounds to zero (even).
        assert_eq!(E4M3.encode(2f32.powi(-10), None), 0);
    }
}
