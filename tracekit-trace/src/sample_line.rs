//! Parsing one line of `CTS/proc_metrics.jsonl`.
//!
//! The samples are most of a trace's bytes, and a sample line is a flat
//! object of five numbers, for which serde_json spends most of its time on
//! per-call and per-key overhead (the SIMD JSON crates are no faster on lines
//! this short: see docs/benchmarks.md). [`parse_sample`] therefore reads the
//! shape the agent and the original write directly and hands every other line
//! to serde_json, so that each line yields exactly what serde_json yields: the
//! fast path accepts only what serde_json reads the same way (known keys
//! without escapes, each once; `null`; unsigned integers in range; decimals
//! whose digits fit the 53-bit mantissa, with at most 19 after the point,
//! which both of serde_json's float algorithms round exactly).

use crate::schema::SampleRecord;

/// Powers of ten up to 1e19, all exact in an f64 (which holds up to 1e22).
const POW10: [f64; 20] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19,
];
/// Powers of ten as integers, to join a decimal's digits.
const POW10_INT: [u64; 20] = {
    let mut p = [1u64; 20];
    let mut i = 1;
    while i < p.len() {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};
/// Digits a u64 always holds.
const MAX_DIGITS: usize = 19;
/// Integers below this convert to f64 exactly.
const EXACT_F64_INT: u64 = 1 << 53;

/// One sample line, as `serde_json::from_slice::<SampleRecord>` reads it.
pub fn parse_sample(line: &[u8]) -> Result<SampleRecord, serde_json::Error> {
    match fast(line) {
        Some(rec) => Ok(rec),
        None => serde_json::from_slice(line),
    }
}

/// The fast path: `None` for anything it does not read exactly as serde_json.
fn fast(line: &[u8]) -> Option<SampleRecord> {
    let mut rec = SampleRecord::default();
    let mut s = skip_ws(skip_ws(line).strip_prefix(b"{")?);
    if let Some(rest) = s.strip_prefix(b"}") {
        s = rest;
    } else {
        let mut seen = 0u8;
        loop {
            let (field, rest) = key(s)?;
            if seen & (1 << field) != 0 {
                return None;
            }
            seen |= 1 << field;
            s = skip_ws(skip_ws(rest).strip_prefix(b":")?);
            if let Some(rest) = s.strip_prefix(b"null") {
                s = rest;
            } else {
                s = match field {
                    0 => uint(s, &mut rec.ts_ms)?,
                    1 => uint(s, &mut rec.pid)?,
                    2 => uint(s, &mut rec.dt_ms)?,
                    3 => float(s, &mut rec.cpu_ms)?,
                    _ => uint(s, &mut rec.rss_kb)?,
                };
            }
            match skip_ws(s).split_first()? {
                (b',', rest) => s = skip_ws(rest),
                (b'}', rest) => {
                    s = rest;
                    break;
                }
                _ => return None,
            }
        }
    }
    skip_ws(s).is_empty().then_some(rec)
}

/// JSON's whitespace, as serde_json skips it.
fn skip_ws(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\n' | b'\t' | b'\r', rest @ ..] = s {
        s = rest;
    }
    s
}

/// A known key with its quotes: the field's index and what follows. Another
/// key, or one with an escape, leaves the fast path.
fn key(s: &[u8]) -> Option<(u8, &[u8])> {
    match s {
        [b'"', b't', b's', b'_', b'm', b's', b'"', rest @ ..] => Some((0, rest)),
        [b'"', b'p', b'i', b'd', b'"', rest @ ..] => Some((1, rest)),
        [b'"', b'd', b't', b'_', b'm', b's', b'"', rest @ ..] => Some((2, rest)),
        [b'"', b'c', b'p', b'u', b'_', b'm', b's', b'"', rest @ ..] => Some((3, rest)),
        [b'"', b'r', b's', b's', b'_', b'k', b'b', b'"', rest @ ..] => Some((4, rest)),
        _ => None,
    }
}

/// A run of digits: its value and length; more than [`MAX_DIGITS`] leave
/// the fast path.
fn digits(s: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    let mut n = 0;
    while let Some(&b) = s.get(n) {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        // Cannot overflow before the length check below: a u64 holds
        // MAX_DIGITS digits, and wrapping keeps longer runs harmless.
        v = v.wrapping_mul(10).wrapping_add(u64::from(d));
        n += 1;
    }
    (n > 0 && n <= MAX_DIGITS).then_some((v, n))
}

/// A JSON integer (no sign, no leading zero) into `out`, when it fits the
/// type (as serde would check); what follows. A fraction or an exponent
/// would make it a float, which serde_json refuses for an integer field.
fn uint<'a, T: TryFrom<u64>>(s: &'a [u8], out: &mut Option<T>) -> Option<&'a [u8]> {
    let (v, n) = digits(s)?;
    if n > 1 && s[0] == b'0' {
        return None;
    }
    let rest = &s[n..];
    if let Some(b'.' | b'e' | b'E') = rest.first() {
        return None;
    }
    *out = Some(T::try_from(v).ok()?);
    Some(rest)
}

/// A JSON number as f64 into `out`: an integer converts as serde's
/// `u64 as f64`, a decimal as significand / 10^digits, exact inputs only;
/// what follows.
fn float<'a>(s: &'a [u8], out: &mut Option<f64>) -> Option<&'a [u8]> {
    let (int, n) = digits(s)?;
    if n > 1 && s[0] == b'0' {
        return None;
    }
    let mut rest = &s[n..];
    let value = match rest.strip_prefix(b".") {
        Some(after) => {
            let (frac, k) = digits(after)?;
            rest = &after[k..];
            let sig = int.checked_mul(POW10_INT[k])?.checked_add(frac)?;
            if sig >= EXACT_F64_INT {
                return None;
            }
            sig as f64 / POW10[k]
        }
        None => int as f64,
    };
    if let Some(b'e' | b'E') = rest.first() {
        return None;
    }
    *out = Some(value);
    Some(rest)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn serde(line: &[u8]) -> Result<SampleRecord, serde_json::Error> {
        serde_json::from_slice(line)
    }

    /// Same outcome as serde_json, to the bit.
    fn check(line: &str) {
        let ours = parse_sample(line.as_bytes());
        let theirs = serde(line.as_bytes());
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.ts_ms, b.ts_ms, "{line}");
                assert_eq!(a.pid, b.pid, "{line}");
                assert_eq!(a.dt_ms, b.dt_ms, "{line}");
                assert_eq!(a.rss_kb, b.rss_kb, "{line}");
                assert_eq!(
                    a.cpu_ms.map(f64::to_bits),
                    b.cpu_ms.map(f64::to_bits),
                    "{line}"
                );
            }
            (Err(_), Err(_)) => {}
            _ => panic!("{line}: ours {ours:?}, serde_json {theirs:?}"),
        }
    }

    #[test]
    fn usual_lines_take_the_fast_path() {
        for line in [
            r#"{"ts_ms":1760000001000,"pid":4000,"dt_ms":135,"cpu_ms":231.88,"rss_kb":177480}"#,
            r#"{"ts_ms": 1, "pid": 2, "dt_ms": 3, "cpu_ms": 4, "rss_kb": 5}"#,
            r#"{"rss_kb":5,"cpu_ms":0.001,"dt_ms":0,"pid":0,"ts_ms":0}"#,
            r#"{"ts_ms":1,"pid":2,"dt_ms":3,"cpu_ms":null}"#,
            r#"{}"#,
        ] {
            assert!(fast(line.as_bytes()).is_some(), "{line}");
            check(line);
        }
    }

    #[test]
    fn unusual_lines_read_as_serde_json_reads_them() {
        for line in [
            r#"{"ts_ms":-1,"pid":2,"dt_ms":-3,"cpu_ms":-4.5,"rss_kb":5}"#,
            r#"{"ts_ms":-0,"pid":2}"#,
            r#"{"ts_ms":1.0,"pid":2}"#,
            r#"{"ts_ms":1e3,"pid":2}"#,
            r#"{"cpu_ms":1e3}"#,
            r#"{"cpu_ms":1.5E-3}"#,
            r#"{"cpu_ms":01}"#,
            r#"{"cpu_ms":1.}"#,
            r#"{"cpu_ms":.5}"#,
            r#"{"cpu_ms":0.30000000000000004}"#,
            r#"{"cpu_ms":9007199254740993.5}"#,
            r#"{"cpu_ms":18446744073709551616}"#,
            r#"{"cpu_ms":18446744073709551615}"#,
            r#"{"cpu_ms":123.4567890123456789012345}"#,
            r#"{"pid":4294967296}"#,
            r#"{"pid":4294967295}"#,
            r#"{"ts_ms":9223372036854775808}"#,
            r#"{"ts_ms":9223372036854775807}"#,
            r#"{"rss_kb":18446744073709551616}"#,
            r#"{"pid":1,"pid":2}"#,
            r#"{"pid":1,"other":"x","cpu_ms":2}"#,
            r#"{"pi\u0064":7}"#,
            r#"{"pid":"7"}"#,
            r#"{"pid":1,}"#,
            r#"{"pid":1}x"#,
            r#"{"pid":1} "#,
            "\t{\"pid\":1}\r",
            r#"{"pid" :1 , "cpu_ms" : 2.25 }"#,
            r#"{"pid":nul}"#,
            r#"{"pid":nullx}"#,
            r#"{"pid":1"#,
            r#"{"pid""#,
            r#"{"#,
            r#"["pid",1]"#,
            "",
            "garbage",
        ] {
            check(line);
        }
    }

    /// Random numbers in every field, printed the ways writers print them.
    #[test]
    fn random_numbers_match_serde_json_to_the_bit() {
        let mut state = 0x1234_5678_u64;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        for _ in 0..200_000 {
            let r = next();
            let cpu = match r % 4 {
                0 => format!("{}", f64::from_bits(next() >> 2)),
                1 => format!("{:.3}", (next() % 10_000_000) as f64 / 7.0),
                2 => format!("{}.{}", next() % 100_000, next() % 1_000_000_000),
                _ => format!("{}", next() >> (next() % 64)),
            };
            let line = format!(
                r#"{{"ts_ms":{},"pid":{},"dt_ms":{},"cpu_ms":{cpu},"rss_kb":{}}}"#,
                next() >> (r % 3),
                next() >> (30 + r % 5),
                next() % 5000,
                next() >> (r % 11),
            );
            check(&line);
        }
    }
}
