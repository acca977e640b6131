//! JWT authentication: to be written.
