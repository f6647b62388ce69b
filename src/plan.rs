//! Plan. SKELETON.
