//! herald: a real-time push gateway.
