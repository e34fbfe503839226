//! Per-request policies, each a tower layer (or a tower policy) in tower's own shape.

pub mod retry;
