//! Webhook authentication: to be written.
