//! Plain KV-cache generation.
