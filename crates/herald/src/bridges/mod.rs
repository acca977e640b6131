//! Bridges: other publishers' protocols that herald speaks, each feeding the one publish pipeline
//! (`publish::Publisher`). `emitter` is the socket.io Redis emitter's.

pub mod emitter;

use crate::config::Config;
use crate::publish::Publisher;

/// Starts the bridges `config` turns on: the socket.io emitter when Redis is configured and `cluster.emitter`
/// is on (the default).
pub async fn start(
    config: &Config,
    publisher: &Publisher,
) -> Result<Option<emitter::Emitter>, emitter::EmitterError> {
    let server = &config.server;
    let (true, Some(url)) = (server.cluster.emitter, server.redis_url.as_deref()) else {
        return Ok(None);
    };
    let settings = emitter::EmitterConfig {
        prefix: server.cluster.emitter_prefix.clone(),
        max_bytes: server.limits.max_publish_bytes,
    };
    emitter::Emitter::start(publisher.clone(), url, settings)
        .await
        .map(Some)
}
