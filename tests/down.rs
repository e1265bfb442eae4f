//! The verbs when the supervisor is down or their output is closed early.
