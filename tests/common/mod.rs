//! Helpers shared by the integration tests that run against the real kernel.

#![allow(dead_code)]

pub mod lab;
