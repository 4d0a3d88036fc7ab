//! FP8 E4M3 (the OCP 8-bit float "E4M3FN": 4 exponent bits with bias 7, 3 mantissa bits, no
//! infinities, NaN only at `S.1111.111`, largest finite value 448) with one f32 scale per row,
//! i.e. per output channel of a weight matrix.
//!
//! Layout (exo's): each row is `scale: f32` then one byte per value; value = `decode(byte) · scale`
//! with `scale = absmax / 448`, so the row's largest value lands on the largest finite code.

/// Largest finite E4M3 value.
pub const MAX: f32 = 448.0;

/// The E4M3 code of `v`, rounded to nearest even and saturated at ±448 (NaN gives NaN).
pub fn encode(v: f32) -> u8 {
    let sign = if v.is_sign_negative() { 0x80u8 } else { 0 };
    let a = v.abs();
    if a.is_nan() {
        return 0x7F;
    }
    if a >= MAX {
        return sign | 0x7E;
    }
    // Below the smallest normal (2^-6) the codes are multiples of 2^-9.
    if a < 2f32.powi(-6) {
        return sign | (a * 512.0).round_ties_even() as u8;
    }
    let bits = a.to_bits();
    let exp = (bits >> 23) as i32 - 127 + 7;
    let mant = bits & 0x7F_FFFF;
    let (mut m3, rest) = (mant >> 20, mant & 0xF_FFFF);
    if rest > 0x8_0000 || (rest == 0x8_0000 && m3 & 1 == 1) {
        m3 += 1;
    }
    // A mantissa carry moves into the exponent field, which is the right next value.
    let code = ((exp as u32) << 3) + m3;
    sign | code.min(0x7E) as u8
}

/// The value of E4M3 code `c`.
pub fn decode(c: u8) -> f32 {
    let (e, m) = (i32::from((c >> 3) & 0xF), f32::from(c & 7));
    let a = match (e, c & 7) {
        (15, 7) => f32::NAN,
        (0, _) => m * 2f32.powi(-9),
        _ => (1.0 + m / 8.0) * 2f32.powi(e - 7),
    };
    if c & 0x80 != 0 {
        -a
    } else {
        a
    }
}

/// Packs a row: its scale, then one code per value.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    let scale = src.iter().fold(0f32, |m, v| m.max(v.abs())) / MAX;
    dst[..4].copy_from_slice(&scale.to_le_bytes());
    for (c, &v) in dst[4..].iter_mut().zip(src) {
        *c = if scale > 0.0 { encode(v / scale) } else { 0 };
    }
}

/// Unpacks a row.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let scale = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
    for (o, &c) in dst.iter_mut().zip(&src[4..]) {
        *o = decode(c) * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finite_code_round_trips() {
        for c in 0..=255u8 {
            if c & 0x7F == 0x7F {
                assert!(decode(c).is_nan());
                continue;
            }
            let v = decode(c);
            // Negative zero encodes to 0x80 and back.
            assert_eq!(encode(v), c, "code {c:#04x} = {v}");
        }
        assert_eq!(decode(0x7E), 448.0);
        assert_eq!(decode(0x01), 2f32.powi(-9));
        assert_eq!(encode(1000.0), 0x7E);
    }
}
