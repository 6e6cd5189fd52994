//! The Grace GPU device model (placeholder; see issue 3).
