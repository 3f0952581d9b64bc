//! Errors and options.
