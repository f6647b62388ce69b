//! QuickXorHash, the only content hash SharePoint reports (graph-api.md §9).
//!
//! Streaming and cheap to snapshot: the state is 160 XOR accumulators (one per
//! byte position modulo 160) plus the length, so an upload session can keep a
//! hasher per session, clone it before a fragment and drop the clone when the
//! fragment breaks. The accumulators are placed at bit `(11 * k) mod 160` only
//! when the digest is taken, which is equivalent to the reference algorithm
//! because XOR is linear. It does not read files; callers feed it bytes.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

const WIDTH_BYTES: usize = 160;

/// Incremental QuickXorHash; `digest` does not consume it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QuickXor {
    /// `acc[k]` is the XOR of every input byte whose index is `k` mod 160.
    #[serde(with = "acc_serde")]
    acc: [u8; WIDTH_BYTES],
    /// Bytes seen so far; also tells where the next byte lands in `acc`.
    len: u64,
}

impl std::fmt::Debug for QuickXor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuickXor")
            .field("len", &self.len)
            .field("digest", &self.digest())
            .finish()
    }
}

impl Default for QuickXor {
    fn default() -> Self {
        Self::new()
    }
}

impl QuickXor {
    /// An empty hasher.
    pub fn new() -> Self {
        Self {
            acc: [0; WIDTH_BYTES],
            len: 0,
        }
    }

    /// Feed more bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        let mut pos = (self.len % WIDTH_BYTES as u64) as usize;
        self.len += data.len() as u64;
        // Head: bring `pos` back to 0 so the bulk loop XORs whole blocks.
        if pos != 0 {
            let n = (WIDTH_BYTES - pos).min(data.len());
            for (a, b) in self.acc[pos..pos + n].iter_mut().zip(&data[..n]) {
                *a ^= *b;
            }
            data = &data[n..];
            pos = (pos + n) % WIDTH_BYTES;
            if pos != 0 {
                return;
            }
        }
        let mut blocks = data.chunks_exact(WIDTH_BYTES);
        for block in &mut blocks {
            for (a, b) in self.acc.iter_mut().zip(block) {
                *a ^= *b;
            }
        }
        for (a, b) in self.acc.iter_mut().zip(blocks.remainder()) {
            *a ^= *b;
        }
    }

    /// Number of bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The 20 raw digest bytes.
    pub fn digest_bytes(&self) -> [u8; 20] {
        let mut state = [0u8; 20];
        for (k, &byte) in self.acc.iter().enumerate() {
            if byte == 0 {
                continue;
            }
            let shift = (11 * k) % 160;
            for bit in 0..8 {
                if byte >> bit & 1 == 1 {
                    let p = (shift + bit) % 160;
                    state[p / 8] ^= 1 << (p % 8);
                }
            }
        }
        for (i, b) in self.len.to_le_bytes().iter().enumerate() {
            state[12 + i] ^= b;
        }
        state
    }

    /// Base64 digest, the form Graph returns in `file.hashes.quickXorHash`.
    pub fn digest(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.digest_bytes())
    }
}

/// QuickXorHash of a whole buffer.
pub fn quick_xor_hash(data: &[u8]) -> String {
    let mut h = QuickXor::new();
    h.update(data);
    h.digest()
}

mod acc_serde {
    //! serde has no impls for 160-byte arrays; store them as base64.
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(acc: &[u8; 160], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(acc))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 160], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("quickxor state must be 160 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_9_vectors() {
        let all: Vec<u8> = (0..=255u8).collect();
        let cases: [(&[u8], &str); 6] = [
            (b"", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            (&[0x4a], "SgAAAAAAAAAAAAAAAQAAAAAAAAA="),
            (&[0xb5, 0xb4], "taAFAAAAAAAAAAAAAgAAAAAAAAA="),
            (b"foo\n", "ZnjDGxQAAAAAAAAABAAAAAAAAAA="),
            (b"hello world", "aCgDG9jwBhDc4Q1yawMZAAAAAAA="),
            (&all, "QkGEfSisZcA7k+FCh71r2dbCayY="),
        ];
        for (input, want) in cases {
            assert_eq!(quick_xor_hash(input), want, "input {input:?}");
        }
    }

    #[test]
    fn streaming_in_any_split_matches_one_shot() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        let want = quick_xor_hash(&data);
        for split in [1, 7, 159, 160, 161, 333, 4999] {
            let mut h = QuickXor::new();
            for chunk in data.chunks(split) {
                h.update(chunk);
            }
            assert_eq!(h.digest(), want, "split {split}");
        }
    }

    #[test]
    fn state_roundtrips_through_json() {
        let mut h = QuickXor::new();
        h.update(b"some bytes");
        let back: QuickXor = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
    }
}
