//! State store. SKELETON.
