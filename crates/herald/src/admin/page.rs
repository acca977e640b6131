//! The console's page at `/admin`: its login and logout, and its static files, embedded in the binary
//! (`ui/admin/`: plain HTML, CSS and JavaScript modules, no build step). Every answer of the console carries a
//! Content-Security-Policy that allows nothing but this origin's own files: no inline script or style, no
//! other origin, no framing.

use std::sync::Arc;

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::auth::{self, AdminAuth, Guard};
use crate::api::{read_body, ApiError};

/// What every console answer allows the browser to load: this origin's scripts, styles, images and API.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CONSOLE: &str = include_str!("../ui/admin/index.html");
const LOGIN: &str = include_str!("../ui/admin/login.html");

/// The console's files: name, content type, body.
const ASSETS: [(&str, &str, &str); 6] = [
    (
        "admin.css",
        "text/css; charset=utf-8",
        include_str!("../ui/admin/admin.css"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/admin/admin.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/admin/api.js"),
    ),
    (
        "charts.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/admin/charts.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/admin/views.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../ui/admin/favicon.svg"),
    ),
];

/// Most bytes a login form may have.
const MAX_LOGIN_BYTES: usize = 4096;

/// `GET /admin`: the console to the admin, else the login form (401 after a wrong bearer token).
pub async fn console(auth: Result<AdminAuth, ApiError>, parts: Parts) -> Response {
    match auth {
        Ok(_) => html(StatusCode::OK, CONSOLE.to_string()),
        Err(ApiError::AdminSlowDown) => login_page(StatusCode::TOO_MANY_REQUESTS, SLOW_DOWN),
        Err(_) if parts.headers.contains_key(header::AUTHORIZATION) => {
            login_page(StatusCode::UNAUTHORIZED, WRONG)
        }
        Err(_) => login_page(StatusCode::OK, ""),
    }
}

const WRONG: &str = "That is not the admin token.";
const SLOW_DOWN: &str = "Too many wrong tokens at once: wait a second and try again.";

/// `POST /admin/login`, the form's `token`: the session cookie and the console, or the form again with 401.
pub async fn login(
    State(guard): State<Arc<Guard>>,
    parts: Parts,
    body: axum::body::Body,
) -> Response {
    let bytes = match read_body(body, &parts.headers, MAX_LOGIN_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let token = form_field(&bytes, "token").unwrap_or_default();
    if !guard.is_token(token.trim()) {
        return match guard.refuse(auth::peer(&parts)).await {
            ApiError::AdminSlowDown => login_page(StatusCode::TOO_MANY_REQUESTS, SLOW_DOWN),
            _ => login_page(StatusCode::UNAUTHORIZED, WRONG),
        };
    }
    let cookie = auth::session_cookie(&guard.new_session(), auth::came_over_https(&parts));
    see_console(cookie)
}

/// `POST /admin/logout`: the session ends on this node and its cookie is removed.
pub async fn logout(State(guard): State<Arc<Guard>>, parts: Parts) -> Response {
    if let Some(session) = auth::cookie(&parts.headers, auth::COOKIE) {
        guard.revoke(session);
    }
    see_console(auth::cleared_cookie(auth::came_over_https(&parts)))
}

/// `GET /admin/assets/{name}`.
pub async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(file, _, _)| *file == name) {
        Some((_, kind, body)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Adds the console's security headers to every answer (`map_response`).
pub async fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A 303 to the console, setting `cookie`.
fn see_console(cookie: HeaderValue) -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, HeaderValue::from_static("/admin")),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let notice = if message.is_empty() {
        String::new()
    } else {
        format!(r#"<p class="notice" role="alert">{message}</p>"#)
    };
    html(status, LOGIN.replace("<!--notice-->", &notice))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The value of `name` in an `application/x-www-form-urlencoded` body.
fn form_field(body: &Bytes, name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_inline() {
        for page in [CONSOLE, LOGIN] {
            assert!(!page.contains("<script>"), "inline script");
            assert!(!page.contains("style="), "inline style");
            assert!(!page.contains("<style"), "inline style sheet");
            assert!(
                !page.contains("http://") && !page.contains("https://"),
                "another origin"
            );
        }
        for (name, _, body) in ASSETS {
            // SVG's namespace is a name, not a place anything is loaded from.
            let body = body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{name} names another origin"
            );
        }
        assert_eq!(
            form_field(&Bytes::from_static(b"a=1&token=x%2By+z"), "token").as_deref(),
            Some("x+y z")
        );
    }
}
