//! Histograms in reports: HdrHistogram's compressed V2 encoding (the format of the Java, C, Go
//! and Rust implementations alike: `V2DeflateSerializer`), as base64 text in JSON. A report that
//! carries its histograms can be merged with others exactly (`pier-load merge`): percentiles are
//! read from the summed histograms, never averaged.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::{Counter, Histogram};

/// The name written beside the encoded histograms.
pub const ENCODING: &str = "hdrhistogram-v2-deflate-base64";

/// `h`, compressed and base64-encoded.
pub fn encode<T: Counter>(h: &Histogram<T>) -> String {
    let mut raw = Vec::new();
    // Writing into a Vec fails only if the histogram cannot be represented, which the bounds
    // pier-load uses rule out; an empty string then reads back as "no histogram".
    match V2DeflateSerializer::new().serialize(h, &mut raw) {
        Ok(_) => STANDARD.encode(raw),
        Err(_) => String::new(),
    }
}

/// The histogram `text` holds (as [`encode`] wrote it).
pub fn decode<T: Counter>(text: &str) -> Result<Histogram<T>, String> {
    let raw = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut raw.as_slice())
        .map_err(|e| format!("not an HdrHistogram V2 encoding: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exactly() {
        let mut h = crate::stats::latency_histogram();
        for v in [1u64, 17, 250, 1_000, 12_345, 999_999, 3_000_000] {
            h.record_n(v, v % 7 + 1).unwrap();
        }
        let back: Histogram<u64> = decode(&encode(&h)).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.value_at_quantile(0.99), h.value_at_quantile(0.99));
        assert!(decode::<u64>("not base64!").is_err());
        assert!(decode::<u64>("aGVsbG8=").is_err());
    }
}
