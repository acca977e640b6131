//! The browser client kit: `GET /herald.js` (`ui/herald.js`, embedded in the binary), and a 404 that says
//! where to get the socket.io client at the paths a socket.io server serves it from, which herald does not.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The module, as herald serves it.
const HERALD_JS: &str = include_str!("ui/herald.js");

/// How long a browser may use its copy before it asks again (with `If-None-Match`).
const CACHE_CONTROL: &str = "public, max-age=300";

/// herald's version and a digest of the module: a new build with a changed module gets a new tag.
static ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    let digest = Sha256::digest(HERALD_JS.as_bytes());
    let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let tag = format!("\"{}-{short}\"", env!("CARGO_PKG_VERSION"));
    HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"herald\""))
});

/// What `/socket.io/socket.io.js` and its siblings answer.
const NO_SOCKETIO_CLIENT: &str = "\
herald does not serve the socket.io client.

Get it from npm:
    npm install socket.io-client
    import { io } from \"socket.io-client\";
or from a CDN:
    <script src=\"https://cdn.jsdelivr.net/npm/socket.io-client@4/dist/socket.io.min.js\"></script>
    (or https://cdn.socket.io/4.8.3/socket.io.min.js; see https://socket.io/docs/v4/client-installation/)

Or use herald's own browser client, which needs no socket.io library:
    import { connect } from \"/herald.js\";
    const client = connect(\"<site>\", { token });
";

/// The bundles a socket.io server serves under its path.
const SOCKETIO_BUNDLES: [&str; 4] = [
    "socket.io.js",
    "socket.io.min.js",
    "socket.io.esm.min.js",
    "socket.io.msgpack.min.js",
];

/// `/herald.js`, and the socket.io bundles' paths under `engine_path` (`/socket.io/` by default), which the
/// engine's own routes (`engine_path` exactly) leave free.
pub fn router(engine_path: &str) -> axum::Router {
    let mut router = axum::Router::new().route("/herald.js", axum::routing::get(herald_js));
    for bundle in SOCKETIO_BUNDLES {
        router = router.route(
            &format!("{engine_path}{bundle}"),
            axum::routing::get(no_socketio_client),
        );
    }
    router
}

async fn herald_js(headers: HeaderMap) -> Response {
    let etag = ETAG.clone();
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    // A page of any origin may import the module: it is public and fetched without credentials.
    let common = [
        (header::ETAG, etag),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        ),
        (
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        ),
    ];
    if cached {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let content_type = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    (common, content_type, HERALD_JS).into_response()
}

async fn no_socketio_client() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        NO_SOCKETIO_CLIENT,
    )
        .into_response()
}
