//! Command line. SKELETON.
