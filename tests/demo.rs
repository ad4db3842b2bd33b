//! The ingest demo end to end (being written).
