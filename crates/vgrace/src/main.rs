//! The `vgrace` command (placeholder; see issue 4).

fn main() {}
