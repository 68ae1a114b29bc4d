//! lorasweep coordinator (placeholder).
