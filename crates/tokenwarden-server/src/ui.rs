//! The dashboard at `/ui`: static HTML, CSS and JavaScript modules (`ui/` beside `src/`),
//! embedded at compile time and served with a strict Content Security Policy.
//!
//! This module only serves files. Everything the dashboard shows comes from the `/v1` API,
//! which the page calls from the browser with the API key the operator types in (kept in
//! the tab's `sessionStorage`); the assets themselves need no key and hold no data, so
//! serving them to anyone reveals nothing. Pages and scripts use relative URLs only, so the
//! dashboard also works behind a proxy that mounts the server under a path prefix.
//!
//! The policy allows nothing but this origin's own files and API (`default-src 'self'`, no
//! inline script or style, `connect-src 'self'`), and no framing. Files are revalidated on
//! every load (`no-cache` with an `ETag`): after an upgrade the browser gets the new files
//! at once, and unchanged ones cost a 304.

use std::sync::LazyLock;

use axum::extract::{Path, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The policy every `/ui` answer carries (404s and redirects included).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'none'; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
     require-trusted-types-for 'script'; trusted-types 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Every file of the dashboard; `index.html` is served at `/ui/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../ui/index.html"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../ui/style.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../ui/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../ui/api.js"),
    },
    Asset {
        name: "dom.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../ui/dom.js"),
    },
    Asset {
        name: "views.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../ui/views.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../ui/favicon.svg"),
    },
];

/// Each asset's `ETag`: a quoted prefix of its SHA-256, computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body.as_bytes());
            let tag = format!("\"{}\"", hex::encode(&digest[..12]));
            HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// `GET /ui`: to `/ui/`, so that the page's relative URLs resolve under it. The location
/// is relative too (`ui/`, resolved against `/ui`), for a server mounted under a prefix.
pub async fn redirect() -> Response {
    let mut response = (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, HeaderValue::from_static("ui/"))],
    )
        .into_response();
    secure(response.headers_mut());
    response
}

/// `GET /ui/`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

/// `GET /ui/{file}`: one of the page's files, or a 404.
pub async fn asset(Path(file): Path<String>, request: Request) -> Response {
    match ASSETS.iter().position(|asset| asset.name == file) {
        Some(n) => serve(n, request.headers()),
        None => {
            let mut response = crate::api::fallback(request).await;
            secure(response.headers_mut());
            response
        }
    }
}

fn serve(n: usize, request: &HeaderMap) -> Response {
    let asset = &ASSETS[n];
    let etag = ETAGS[n].clone();
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim().trim_start_matches("W/") == etag)
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(headers);
    response
}

/// The headers of every `/ui` answer.
fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // For browsers that predate `frame-ancestors`.
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_loads_is_served_and_nothing_is_inline() {
        let index = ASSETS[0].body;
        for asset in &ASSETS[1..] {
            let imported = ASSETS
                .iter()
                .any(|other| other.body.contains(&format!("./{}'", asset.name)));
            assert!(
                index.contains(&format!("\"{}\"", asset.name)) || imported,
                "{} is neither linked from index.html nor imported",
                asset.name
            );
        }
        // The policy forbids inline script and style: the page must not need them.
        for forbidden in ["<script>", "<style", "style=", "javascript:"] {
            assert!(!index.contains(forbidden), "index.html has {forbidden:?}");
        }
        let handler = index.split(" on").skip(1).find(|rest| {
            rest.split_whitespace()
                .next()
                .is_some_and(|word| word.contains('='))
        });
        assert!(handler.is_none(), "an inline event handler: on{handler:?}");
        // User data is inserted as text: no HTML parsing of strings anywhere.
        for asset in &ASSETS[1..] {
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
            ] {
                assert!(!asset.body.contains(sink), "{} uses {sink}", asset.name);
            }
        }
    }
}
