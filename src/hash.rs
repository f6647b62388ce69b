//! Content hashes: SHA-1 and QuickXorHash computed in ONE read of a file.
//!
//! SharePoint reports only `quickXorHash` (graph-api.md section 9), which we
//! verify uploads against; SHA-1 identifies content locally (renames, adopts).
//! SKELETON: `Hashes` is the contract.

/// The two hashes of one file's content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hashes {
    /// Lowercase hex, 40 characters.
    pub sha1: String,
    /// Base64, 28 characters, as Graph returns it.
    pub quick_xor: String,
}
