//! Byte sizes in configuration: an integer, or a string like `"512MiB"`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte size: an integer, or a string like `"512MiB"`, `"4 GiB"`, `"1g"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"4GiB"`, `"512 MB"`, `"1g"`, `"1048576"` (binary units; `k`/`m`/`g`/`t`
    /// and their `iB`/`B` spellings all mean powers of 1024).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (try \"512MiB\" or \"4GiB\")"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            u => return Err(format!("unknown size unit {u:?} in {s:?}")),
        };
        if num.is_nan() || num < 0.0 {
            return Err(format!("{s:?} is negative"));
        }
        Ok(Self((num * mult as f64) as u64))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0 as f64;
        match self.0 {
            n if n >= 1 << 40 => write!(f, "{:.1} TiB", b / (1u64 << 40) as f64),
            n if n >= 1 << 30 => write!(f, "{:.1} GiB", b / (1u64 << 30) as f64),
            n if n >= 1 << 20 => write!(f, "{:.1} MiB", b / (1u64 << 20) as f64),
            n if n >= 1 << 10 => write!(f, "{:.1} KiB", b / 1024.0),
            n => write!(f, "{n} B"),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// Serde for a `u64` byte count that accepts what [`ByteSize`] does
/// (`#[serde(with = "crate::size::bytes")]`), so that configuration structs keep
/// plain integers.
pub mod bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::ByteSize;

    /// Serializes as an integer.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    /// Deserializes an integer or a size string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        ByteSize::deserialize(d).map(|b| b.0)
    }
}

/// [`bytes`] for a `u32` (sizes past 4 GiB are refused).
pub mod bytes_u32 {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::ByteSize;

    /// Serializes as an integer.
    pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(*v)
    }

    /// Deserializes an integer or a size string of at most 4 GiB - 1.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let b = ByteSize::deserialize(d)?;
        u32::try_from(b.0)
            .map_err(|_| serde::de::Error::custom(format!("{b} is over 4 GiB - 1 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("4GiB").unwrap().0, 4 << 30);
        assert_eq!(ByteSize::parse("512 MB").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::parse("1.5k").unwrap().0, 1536);
        assert_eq!(ByteSize::parse("42").unwrap().0, 42);
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("4 parsecs").is_err());
    }
}
