//! Starting a device's protocol trace (`serve --trace`, `trace = "FILE"` in the config): the
//! one place `serve` asks for its observer, so the serve loop stays unaware of traces.

use std::sync::Arc;

use anyhow::{Context, Result};
use vfu::server::Observer;
use vfu::trace::{TraceLimits, TraceWriter};

use crate::config::DeviceEntry;

/// The trace observer for `entry`, when it asks for one; errors name the file.
pub fn open(entry: &DeviceEntry) -> Result<Option<Arc<dyn Observer>>> {
    let Some(path) = &entry.trace else {
        return Ok(None);
    };
    let limits = TraceLimits {
        max_bytes: entry.trace_max_size,
        ..TraceLimits::default()
    };
    let writer = TraceWriter::open(path, limits)
        .with_context(|| format!("cannot trace {}", entry.socket.display()))?;
    tracing::info!("tracing {} to {}", entry.socket.display(), path.display());
    Ok(Some(writer))
}
