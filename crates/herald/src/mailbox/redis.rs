//! The Redis mailbox store, for clusters (written by a helper; placeholder).
