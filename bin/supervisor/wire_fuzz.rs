//! Fuzz targets for the IPC messages (see `scripts/fuzz`).
