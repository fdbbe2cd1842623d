//! Providers (placeholder).
