use std::fmt;
use std::str::FromStr;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::minifloat::{E4M3, E5M2};
use crate::rng::SplitMix64;

/// An element type of the device (HW-DT-LIST).
///
/// `F8E4M3` follows the OCP E4M3 ("fn") encoding: the legacy NC-v2/v3 cFP8
/// NaN/Inf encoding is not published (HW-DT-FP8), so this is an assumption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// bfloat16 (1/8/7).
    Bf16,
    /// IEEE binary16 (1/5/10).
    F16,
    /// fp8 E4M3 (1/4/3), max 448, no infinities.
    F8E4M3,
    /// fp8 E5M2 (1/5/2), max 57344, with infinities.
    F8E5M2,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
}

/// How a value is rounded when it is stored into a narrower type (HW-DT-ROUND).
#[derive(Debug)]
pub enum Rounding<'a> {
    /// Round to nearest, ties to even (the hardware default).
    NearestEven,
    /// Stochastic rounding driven by a seeded generator.
    Stochastic(&'a mut SplitMix64),
}

impl DType {
    /// Every dtype, in a fixed order.
    pub const ALL: [DType; 11] = [
        DType::F32,
        DType::Bf16,
        DType::F16,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::U8,
        DType::U16,
        DType::U32,
    ];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::Bf16 | DType::F16 | DType::I16 | DType::U16 => 2,
            DType::F8E4M3 | DType::F8E5M2 | DType::I8 | DType::U8 => 1,
        }
    }

    /// True for the floating-point types.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::Bf16 | DType::F16 | DType::F8E4M3 | DType::F8E5M2)
    }

    /// True for the integer types.
    pub const fn is_int(self) -> bool {
        !self.is_float()
    }

    /// True for the fp8 types.
    pub const fn is_fp8(self) -> bool {
        matches!(self, DType::F8E4M3 | DType::F8E5M2)
    }

    /// The short name used in text forms, npy headers aside (`bf16`, `f8e4m3`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            DType::F8E4M3 => "f8e4m3",
            DType::F8E5M2 => "f8e5m2",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
        }
    }

    /// Range of an integer type as `(min, max)`; `None` for floats.
    pub const fn int_range(self) -> Option<(i64, i64)> {
        match self {
            DType::I8 => Some((i8::MIN as i64, i8::MAX as i64)),
            DType::I16 => Some((i16::MIN as i64, i16::MAX as i64)),
            DType::I32 => Some((i32::MIN as i64, i32::MAX as i64)),
            DType::U8 => Some((0, u8::MAX as i64)),
            DType::U16 => Some((0, u16::MAX as i64)),
            DType::U32 => Some((0, u32::MAX as i64)),
            _ => None,
        }
    }

    /// Decodes the raw bits of one element (low `size()` bytes of `bits`) to `f32`.
    /// Integers convert by value (32-bit integers may round).
    #[inline]
    pub fn decode(self, bits: u32) -> f32 {
        match self {
            DType::F32 => f32::from_bits(bits),
            DType::Bf16 => f32::from_bits(bits << 16),
            DType::F16 => f16::from_bits(bits as u16).to_f32(),
            DType::F8E4M3 => E4M3.decode(bits as u8),
            DType::F8E5M2 => E5M2.decode(bits as u8),
            DType::I8 => bits as u8 as i8 as f32,
            DType::I16 => bits as u16 as i16 as f32,
            DType::I32 => bits as i32 as f32,
            DType::U8 => bits as u8 as f32,
            DType::U16 => bits as u16 as f32,
            DType::U32 => bits as f32,
        }
    }

    /// Decodes the raw bits of an integer element to its exact value; floats
    /// convert through `f32` and truncate toward zero.
    #[inline]
    pub fn decode_int(self, bits: u32) -> i64 {
        match self {
            DType::I8 => bits as u8 as i8 as i64,
            DType::I16 => bits as u16 as i16 as i64,
            DType::I32 => bits as i32 as i64,
            DType::U8 => bits as u8 as i64,
            DType::U16 => bits as u16 as i64,
            DType::U32 => bits as i64,
            _ => self.decode(bits) as i64,
        }
    }

    /// Encodes `x` to this type's raw bits (in the low `size()` bytes).
    ///
    /// Floats round per `rounding`; fp8 saturates finite overflow to ±max.
    /// Integers round to nearest even and saturate to the type's range, NaN
    /// becomes 0 (HW-DT-F2I).
    #[inline]
    pub fn encode(self, x: f32, rounding: Rounding<'_>) -> u32 {
        match (self, rounding) {
            (DType::F32, _) => x.to_bits(),
            (DType::Bf16, Rounding::NearestEven) => bf16::from_f32(x).to_bits() as u32,
            (DType::F16, Rounding::NearestEven) => f16::from_f32(x).to_bits() as u32,
            (DType::F8E4M3, Rounding::NearestEven) => E4M3.encode(x, None) as u32,
            (DType::F8E5M2, Rounding::NearestEven) => E5M2.encode(x, None) as u32,
            (DType::F8E4M3, Rounding::Stochastic(rng)) => E4M3.encode(x, Some(rng)) as u32,
            (DType::F8E5M2, Rounding::Stochastic(rng)) => E5M2.encode(x, Some(rng)) as u32,
            (DType::Bf16, Rounding::Stochastic(rng)) => stochastic_bf16(x, rng),
            (DType::F16, Rounding::Stochastic(rng)) => stochastic_f16(x, rng),
            (int, _) => self.encode_int_from_f64(x as f64, int),
        }
    }

    /// Encodes an exact integer value, saturating to this type's range. Floats
    /// encode the value converted to `f32` (nearest even).
    #[inline]
    pub fn encode_int(self, v: i64) -> u32 {
        match self.int_range() {
            Some((lo, hi)) => v.clamp(lo, hi) as u32 & self.mask(),
            None => self.encode(v as f32, Rounding::NearestEven),
        }
    }

    fn encode_int_from_f64(self, x: f64, int: DType) -> u32 {
        if x.is_nan() {
            return 0;
        }
        let (lo, hi) = int.int_range().unwrap_or((0, 0));
        let v = x.round_ties_even().clamp(lo as f64, hi as f64) as i64;
        v as u32 & int.mask()
    }

    /// Bit mask of the low `size()` bytes.
    #[inline]
    pub const fn mask(self) -> u32 {
        match self.size() {
            1 => 0xff,
            2 => 0xffff,
            _ => 0xffff_ffff,
        }
    }

    /// Rounds `x` to the nearest value representable in this type (RNE).
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        self.decode(self.encode(x, Rounding::NearestEven))
    }

    /// Reads one element from little-endian bytes.
    #[inline]
    pub fn load_bits(self, bytes: &[u8]) -> u32 {
        match self.size() {
            1 => bytes[0] as u32,
            2 => u16::from_le_bytes([bytes[0], bytes[1]]) as u32,
            _ => u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        }
    }

    /// Writes one element's low `size()` bytes, little-endian.
    #[inline]
    pub fn store_bits(self, bits: u32, bytes: &mut [u8]) {
        let le = bits.to_le_bytes();
        bytes[..self.size()].copy_from_slice(&le[..self.size()]);
    }
}

fn stochastic_bf16(x: f32, rng: &mut SplitMix64) -> u32 {
    if !x.is_finite() {
        return bf16::from_f32(x).to_bits() as u32;
    }
    // Add uniform noise below the kept 16 bits, then truncate.
    let noise = (rng.next_u64() & 0xffff) as u32;
    let bits = x.to_bits();
    let sum = bits.wrapping_add(noise);
    // Keep the sign; overflow into the exponent rounds up to the next binade (or inf).
    (sum >> 16) & 0xffff
}

fn stochastic_f16(x: f32, rng: &mut SplitMix64) -> u32 {
    let down = f16::from_f32(x);
    if !x.is_finite() || down.to_f32() == x {
        return down.to_bits() as u32;
    }
    // Bracket x between two neighbouring f16 values and pick one with
    // probability proportional to proximity.
    let lo_bits = if (down.to_f32() < x) == (x > 0.0) { down } else { f16::from_bits(down.to_bits() - 1) };
    let hi_bits = f16::from_bits(lo_bits.to_bits() + 1);
    let (lo, hi) = (lo_bits.to_f32() as f64, hi_bits.to_f32() as f64);
    let frac = ((x as f64).abs() - lo.abs()) / (hi.abs() - lo.abs());
    if rng.next_f64() < frac {
        hi_bits.to_bits() as u32
    } else {
        lo_bits.to_bits() as u32
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dtype name that is not one of [`DType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype `{0}` (expected one of f32, bf16, f16, f8e4m3, f8e5m2, i8, i16, i32, u8, u16, u32)")]
pub struct UnknownDType(pub String);

impl FromStr for DType {
    type Err = UnknownDType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => DType::F32,
            "bf16" | "bfloat16" => DType::Bf16,
            "f16" | "fp16" | "float16" => DType::F16,
            "f8e4m3" | "fp8e4m3" | "fp8_e4m3" | "float8_e4m3" | "e4m3" => DType::F8E4M3,
            "f8e5m2" | "fp8e5m2" | "fp8_e5m2" | "float8_e5m2" | "e5m2" => DType::F8E5M2,
            "i8" | "int8" => DType::I8,
            "i16" | "int16" => DType::I16,
            "i32" | "int32" => DType::I32,
            "u8" | "uint8" => DType::U8,
            "u16" | "uint16" => DType::U16,
            "u32" | "uint32" => DType::U32,
            _ => return Err(UnknownDType(s.to_string())),
        };
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        assert!("f64".parse::<DType>().is_err());
    }

    #[test]
    fn int_conversion_rounds_even_and_saturates() {
        assert_eq!(DType::I8.decode(DType::I8.encode(2.5, Rounding::NearestEven)), 2.0);
        assert_eq!(DType::I8.decode(DType::I8.encode(3.5, Rounding::NearestEven)), 4.0);
        assert_eq!(DType::I8.decode(DType::I8.encode(-1000.0, Rounding::NearestEven)), -128.0);
        assert_eq!(DType::U8.decode(DType::U8.encode(-3.0, Rounding::NearestEven)), 0.0);
        assert_eq!(DType::U8.decode(DType::U8.encode(f32::NAN, Rounding::NearestEven)), 0.0);
        assert_eq!(DType::I32.decode_int(DType::I32.encode_int(1 << 40)), i32::MAX as i64);
    }

    #[test]
    fn bf16_ties_to_even() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
        assert_eq!(DType::Bf16.round(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(DType::Bf16.round(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2.0 * 2f32.powi(-7));
    }

    #[test]
    fn stochastic_rounding_is_seeded_and_unbiased() {
        let x = 1.0 + 2f32.powi(-9); // a quarter of the way from 1.0 to the next bf16
        let mut rng = SplitMix64::new(7);
        let n = 20_000;
        let mut sum = 0.0f64;
        for _ in 0..n {
            sum += DType::Bf16.decode(DType::Bf16.encode(x, Rounding::Stochastic(&mut rng))) as f64;
        }
        let mean = sum / n as f64;
        assert!((mean - x as f64).abs() < 2e-4, "mean {mean}");
        let a: Vec<u32> = {
            let mut r = SplitMix64::new(3);
            (0..64).map(|_| DType::F8E4M3.encode(0.3, Rounding::Stochastic(&mut r))).collect()
        };
        let b: Vec<u32> = {
            let mut r = SplitMix64::new(3);
            (0..64).map(|_| DType::F8E4M3.encode(0.3, Rounding::Stochastic(&mut r))).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|&v| v != a[0]), "stochastic rounding never varied");
    }

    #[test]
    fn stochastic_f16_brackets_value() {
        let mut rng = SplitMix64::new(11);
        for &x in &[0.1f32, -0.1, 1000.3, -7.77e-6] {
            let lo_hi = (f16::from_f32(x).to_f32(), x);
            for _ in 0..50 {
                let y = DType::F16.decode(DType::F16.encode(x, Rounding::Stochastic(&mut rng)));
                let ulp = (f16::from_f32(x).to_f32().abs() * 2f32.powi(-9)).max(2f32.powi(-24));
                assert!((y - x).abs() <= ulp * 1.01, "{x} -> {y} ({lo_hi:?})");
            }
        }
    }

    proptest! {
        #[test]
        fn float_round_is_idempotent_and_nearest(x in -6.0e4f32..6.0e4f32) {
            for d in [DType::Bf16, DType::F16, DType::F8E4M3, DType::F8E5M2] {
                let r = d.round(x);
                prop_assert_eq!(d.round(r), r);
                // No representable neighbour is strictly closer.
                let bits = d.encode(x, Rounding::NearestEven);
                for nb in [bits.wrapping_add(1) & d.mask(), bits.wrapping_sub(1) & d.mask()] {
                    let v = d.decode(nb);
                    if v.is_finite() && (v.is_sign_negative() == r.is_sign_negative()) {
                        let sat = d.is_fp8() && x.abs() > d.decode(d.encode(f32::MAX, Rounding::NearestEven)).abs();
                        if !sat {
                            prop_assert!((v - x).abs() >= (r - x).abs(), "{:?} {} -> {} but {} closer", d, x, r, v);
                        }
                    }
                }
            }
        }

        #[test]
        fn int_store_saturates(x in -1.0e10f64..1.0e10f64) {
            for d in [DType::I8, DType::I16, DType::I32, DType::U8, DType::U16, DType::U32] {
                let (lo, hi) = d.int_range().unwrap();
                let v = d.decode_int(d.encode(x as f32, Rounding::NearestEven));
                prop_assert!(v >= lo && v <= hi);
                let expect = (x as f32 as f64).round_ties_even().clamp(lo as f64, hi as f64) as i64;
                prop_assert_eq!(v, expect);
            }
        }
    }
}
