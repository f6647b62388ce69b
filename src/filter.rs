//! Filter: include/exclude patterns. SKELETON.
