//! The hpfaas service (placeholder until the registry lands).
