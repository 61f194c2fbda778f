//! Graceful stop and zombie cleanup (DESIGN.md §6). Being built: see the issue tracker.
