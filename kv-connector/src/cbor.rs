//! The subset of canonical CBOR (RFC 8949 §4.2.1, "core deterministic encoding")
//! that the KV keys need: unsigned and negative integers, byte and text strings,
//! arrays and null. Python's `cbor2.dumps(x, canonical=True)` writes the same bytes
//! for the same values, which is what makes the chunk hashes portable.

/// A CBOR value of the subset the keys use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// An integer (major type 0 or 1).
    Int(i64),
    /// A byte string (major type 2).
    Bytes(Vec<u8>),
    /// A UTF-8 text string (major type 3).
    Text(String),
    /// An array (major type 4).
    Array(Vec<Value>),
    /// `null` (simple value 22). Python's `None`.
    Null,
}

impl Value {
    /// Appends this value's canonical encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) if *i >= 0 => head(out, 0, *i as u64),
            // -1 - n, computed without overflow for i64::MIN.
            Value::Int(i) => head(out, 1, !(*i as u64)),
            Value::Bytes(b) => {
                head(out, 2, b.len() as u64);
                out.extend_from_slice(b);
            }
            Value::Text(s) => {
                head(out, 3, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Array(items) => {
                head(out, 4, items.len() as u64);
                for v in items {
                    v.encode(out);
                }
            }
            Value::Null => out.push(0xf6),
        }
    }

    /// The canonical encoding.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Writes an initial byte and argument in the shortest form.
pub(crate) fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u8::MAX as u64 {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<u32> for Value {
    fn from(n: u32) -> Self {
        Value::Int(n as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(v: &Value) -> String {
        v.to_vec().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Examples from RFC 8949 Appendix A.
    #[test]
    fn rfc_examples() {
        assert_eq!(hex(&Value::Int(0)), "00");
        assert_eq!(hex(&Value::Int(23)), "17");
        assert_eq!(hex(&Value::Int(24)), "1818");
        assert_eq!(hex(&Value::Int(1000)), "1903e8");
        assert_eq!(hex(&Value::Int(1_000_000)), "1a000f4240");
        assert_eq!(hex(&Value::Int(1_000_000_000_000)), "1b000000e8d4a51000");
        assert_eq!(hex(&Value::Int(-1)), "20");
        assert_eq!(hex(&Value::Int(-1000)), "3903e7");
        assert_eq!(hex(&Value::Int(i64::MIN)), "3b7fffffffffffffff");
        assert_eq!(hex(&Value::Bytes(vec![1, 2, 3, 4])), "4401020304");
        assert_eq!(hex(&Value::from("IETF")), "6449455446");
        assert_eq!(hex(&Value::Null), "f6");
        let nested = Value::Array(vec![
            Value::Int(1),
            Value::Array(vec![Value::Int(2), Value::Int(3)]),
        ]);
        assert_eq!(hex(&nested), "8201820203");
        let long = Value::Array((1..=25).map(Value::Int).collect());
        assert!(hex(&long).starts_with("981901020304"));
    }
}
