//! Shared helpers of the cross-crate and interop tests.
