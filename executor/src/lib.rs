//! Endpoint agent, broker and manager (placeholder).
