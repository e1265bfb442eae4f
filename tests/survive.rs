//! What `supervisor` survives: hostile values, jobs that leave processes behind, a store that fails.
