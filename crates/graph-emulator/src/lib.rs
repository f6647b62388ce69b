//! graph-emulator. SKELETON.
