//! The compact binary program form (`.tyb`): an 8-byte header (`TYB\0`
//! magic, little-endian u32 format version) followed by the program encoded
//! with `postcard` (varint integers, no padding).

use crate::program::{Program, PROGRAM_VERSION};

/// Magic bytes at the start of a binary program.
pub const BINARY_MAGIC: [u8; 4] = *b"TYB\0";

/// A binary program that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    /// The data does not start with the magic bytes.
    #[error("not a trainyard binary program (missing TYB magic)")]
    BadMagic,
    /// Written by another format version.
    #[error("binary program format version {found} is not supported (this build reads version {supported})")]
    Version {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The payload is truncated or malformed.
    #[error("malformed binary program: {0}")]
    Decode(String),
}

impl Program {
    /// Encodes the program in the binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.insts.len() * 48);
        out.extend_from_slice(&BINARY_MAGIC);
        out.extend_from_slice(&PROGRAM_VERSION.to_le_bytes());
        // Serialising plain data into a Vec cannot fail.
        let body = postcard::to_stdvec(self).unwrap_or_default();
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a program from the binary form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Program, BinaryError> {
        if bytes.len() < 8 || bytes[..4] != BINARY_MAGIC {
            return Err(BinaryError::BadMagic);
        }
        let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if version != PROGRAM_VERSION {
            return Err(BinaryError::Version { found: version, supported: PROGRAM_VERSION });
        }
        let (program, rest): (Program, &[u8]) =
            postcard::take_from_bytes(&bytes[8..]).map_err(|e| BinaryError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(BinaryError::Decode(format!("{} trailing bytes after the program", rest.len())));
        }
        Ok(program)
    }

    /// True if `bytes` start like a binary program.
    pub fn is_binary(bytes: &[u8]) -> bool {
        bytes.len() >= 4 && bytes[..4] == BINARY_MAGIC
    }
}
