//! The upstream URL of a proxied call: the client's path and query, still percent-encoded as
//! they arrived, put under the provider's `api_base_url`, and nothing that could leave it.
//!
//! A path is refused (before any request is made) when any of its segments, decoded as often
//! as it is encoded (`%252e` is `%2e` is `.`), is `.` or `..`, or holds one between slashes
//! (`..%2F..`: a server that decodes `%2F` before routing would see `../..`); when it holds a
//! backslash or a control character in any encoding; when it starts with `/` (the full path
//! would start `//`, an authority); or when its first segment looks like a scheme (`https:`)
//! or an authority (`user@host`). Everything else is forwarded byte for byte: an encoded
//! slash that stays inside a segment (`projects/group%2Fproject`) is not decoded.
//!
//! After building, the URL is checked once more: its origin must be the base's and its path
//! must start with the base's path. The checks above are what makes that hold for every
//! decoding an upstream server may apply; the last check is what makes it hold for ours.

use std::borrow::Cow;
use std::fmt;

use url::Url;

/// Most rounds of percent-decoding looked through: a path still encoded after that is refused.
const MAX_DECODE_ROUNDS: usize = 4;

/// Why a proxied path may not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetError {
    /// A `.` or `..` segment, in any encoding.
    DotSegment,
    /// A backslash, in any encoding.
    Backslash,
    /// A control character, in any encoding.
    ControlCharacter,
    /// The path starts with `/` (the URL's path would start `//`).
    LeadingSlash,
    /// The first segment looks like a scheme (`https:`).
    Scheme,
    /// The first segment looks like an authority (`user@host`).
    Authority,
    /// Still percent-encoded after several rounds of decoding.
    TooDeeplyEncoded,
    /// A character a path cannot hold (`?`, `#`).
    Malformed,
    /// The URL built would not be under the base (a last check; the ones above should make it
    /// unreachable).
    Escapes,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DotSegment => "must not contain `.` or `..` segments, in any encoding",
            Self::Backslash => "must not contain a backslash, in any encoding",
            Self::ControlCharacter => "must not contain a control character, in any encoding",
            Self::LeadingSlash => "must not start with `/` (an authority after `//`)",
            Self::Scheme => {
                "must not start with a scheme (`https:`): it is relative to the \
                provider's api_base_url"
            }
            Self::Authority => "must not start with an authority (`user@host`)",
            Self::TooDeeplyEncoded => "is percent-encoded too many times over",
            Self::Malformed => "is not a URL path",
            Self::Escapes => "would leave the provider's api_base_url",
        })
    }
}

impl std::error::Error for TargetError {}

/// The URL of `raw_path` and `raw_query` under `base` (whose query and fragment are ignored),
/// with the token in a header. [`crate::proxy::ApiBase::target`] is the same with its
/// provider's token placement.
///
/// # Errors
/// A [`TargetError`] saying why the path may not be sent.
pub fn resolve(base: &Url, raw_path: &str, raw_query: Option<&str>) -> Result<Url, TargetError> {
    let api = crate::proxy::ApiBase::new(base.clone(), crate::proxy::TokenPlacement::BearerHeader);
    api.target(raw_path, raw_query)
}

/// [`resolve`] with the base's path prefix (ending in `/`) given, and the query parameter
/// `drop_param` (the one the token will take) removed from the client's query.
pub(crate) fn resolve_under(
    base: &Url,
    prefix: &str,
    raw_path: &str,
    raw_query: Option<&str>,
    drop_param: Option<&str>,
) -> Result<Url, TargetError> {
    check_path(raw_path)?;
    let mut path = String::with_capacity(prefix.len() + raw_path.len());
    path.push_str(prefix);
    path.push_str(raw_path);
    let mut url = base.clone();
    url.set_path(&path);
    let query = raw_query.map(|q| without_param(q, drop_param));
    match query.as_deref() {
        Some(q) if !q.is_empty() => url.set_query(Some(q)),
        _ => url.set_query(None),
    }
    // An http(s) URL (no other scheme has an origin a proxied call could stay under) whose
    // scheme, credentials, host and port are exactly the base's: its serialization up to the
    // path, compared without building `Origin`s.
    let origin = ..url::Position::BeforePath;
    let web = matches!(url.scheme(), "http" | "https");
    if !web || url[origin] != base[origin] || !url.path().starts_with(prefix) {
        return Err(TargetError::Escapes);
    }
    Ok(url)
}

fn check_path(raw_path: &str) -> Result<(), TargetError> {
    if raw_path.contains(['?', '#']) {
        return Err(TargetError::Malformed);
    }
    if raw_path.starts_with('/') {
        return Err(TargetError::LeadingSlash);
    }
    for (i, segment) in raw_path.split('/').enumerate() {
        let decoded = decode_fully(segment)?;
        if decoded.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(TargetError::ControlCharacter);
        }
        if decoded.contains(&b'\\') {
            return Err(TargetError::Backslash);
        }
        if decoded.split(|&b| b == b'/').any(is_dot_segment) {
            return Err(TargetError::DotSegment);
        }
        if i == 0 {
            if decoded.first() == Some(&b'/') {
                return Err(TargetError::LeadingSlash);
            }
            if looks_like_scheme(&decoded) {
                return Err(TargetError::Scheme);
            }
            if decoded.contains(&b'@') {
                return Err(TargetError::Authority);
            }
        }
    }
    Ok(())
}

/// Whether a decoded path segment is `.` or `..` to some server: as it is, before a `;`
/// parameter (`..;x`, which servlet containers and the gateways before them strip), in IIS's
/// `%u002e`, or written with characters that decoders or Unicode normalisation turn into a
/// dot (overlong UTF-8 `C0 AE` / `E0 80 AE`, U+FF0E FULLWIDTH FULL STOP, U+2024 ONE DOT
/// LEADER).
fn is_dot_segment(part: &[u8]) -> bool {
    let name = part.split(|&b| b == b';').next().unwrap_or_default();
    let mut rest = name;
    let mut dots = 0;
    while !rest.is_empty() {
        let unit = DOT_FORMS
            .iter()
            .find(|form| rest.len() >= form.len() && rest[..form.len()].eq_ignore_ascii_case(form));
        match unit {
            Some(form) => {
                dots += 1;
                rest = &rest[form.len()..];
            }
            None => return false,
        }
    }
    (1..=2).contains(&dots)
}

/// Ways to write a dot that some server reads as one (see [`is_dot_segment`]).
const DOT_FORMS: [&[u8]; 6] = [
    b".",
    b"%u002e",
    b"\xC0\xAE",
    b"\xE0\x80\xAE",
    b"\xEF\xBC\x8E",
    b"\xE2\x80\xA4",
];

/// A URL scheme at the start of the first segment: `ALPHA *( ALPHA / DIGIT / "+" / "-" /
/// "." ) ":"` (RFC 3986 §3.1) with nothing after the colon or a `/` (`https:`,
/// `https:%2F%2Fhost`). `images:annotate` (Google's `resource:action` paths) is not one.
fn looks_like_scheme(segment: &[u8]) -> bool {
    let Some(colon) = segment.iter().position(|&b| b == b':') else {
        return false;
    };
    let scheme = &segment[..colon];
    let after = &segment[colon + 1..];
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
        && (after.is_empty() || after.starts_with(b"/"))
}

/// `segment` percent-decoded until nothing is left to decode.
fn decode_fully(segment: &str) -> Result<Vec<u8>, TargetError> {
    let mut current: Cow<'_, [u8]> = Cow::Borrowed(segment.as_bytes());
    for _ in 0..=MAX_DECODE_ROUNDS {
        match decode_once(&current) {
            None => return Ok(current.into_owned()),
            Some(next) => current = Cow::Owned(next),
        }
    }
    Err(TargetError::TooDeeplyEncoded)
}

/// One round of percent-decoding; `None` when there was no `%XX` to decode.
fn decode_once(bytes: &[u8]) -> Option<Vec<u8>> {
    // Most segments have nothing to decode: no allocation for them.
    if !bytes.contains(&b'%') {
        return None;
    }
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits: at most 255.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(u8::MAX));
            changed = true;
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    changed.then_some(out)
}

/// `raw` percent-decoded once (`%XX` → the byte; anything else as it is), as a router
/// decodes one path segment: `raw` itself when it holds nothing to decode, `None` when the
/// bytes it encodes are not UTF-8.
pub fn percent_decode(raw: &str) -> Option<Cow<'_, str>> {
    match decode_once(raw.as_bytes()) {
        None => Some(Cow::Borrowed(raw)),
        Some(bytes) => String::from_utf8(bytes).ok().map(Cow::Owned),
    }
}

/// `query` without the pairs whose (decoded) name is `param`; the others byte for byte.
fn without_param<'q>(query: &'q str, param: Option<&str>) -> Cow<'q, str> {
    let Some(param) = param else {
        return Cow::Borrowed(query);
    };
    let is_param = |pair: &str| {
        let name = pair.split('=').next().unwrap_or("");
        let name = name.replace('+', " ");
        decode_once(name.as_bytes()).map_or(name.as_bytes() == param.as_bytes(), |decoded| {
            decoded == param.as_bytes()
        })
    };
    if !query.split('&').any(is_param) {
        return Cow::Borrowed(query);
    }
    Cow::Owned(
        query
            .split('&')
            .filter(|pair| !is_param(pair))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base() -> Url {
        Url::parse("https://api.example.com/api/v4").expect("base")
    }

    fn target(path: &str) -> Result<String, TargetError> {
        resolve(&base(), path, None).map(String::from)
    }

    #[test]
    fn only_an_http_or_https_base_can_be_proxied_to() {
        for base in [
            "file:///srv/api/",
            "ftp://files.example.com/pub/",
            "foo://host/api/",
        ] {
            let base = Url::parse(base).expect("base");
            assert_eq!(
                resolve(&base, "x", None),
                Err(TargetError::Escapes),
                "{base}"
            );
        }
        let plain = Url::parse("http://127.0.0.1:8080/api").expect("base");
        assert!(resolve(&plain, "x", None).is_ok());
    }

    #[test]
    fn paths_and_queries_are_forwarded_byte_for_byte() {
        assert_eq!(
            target("projects/group%2Fproject/issues").as_deref(),
            Ok("https://api.example.com/api/v4/projects/group%2Fproject/issues")
        );
        assert_eq!(
            resolve(&base(), "users/@me", Some("a=%2F&b=c+d&b=e")).map(String::from),
            Ok("https://api.example.com/api/v4/users/@me?a=%2F&b=c+d&b=e".to_owned())
        );
        assert_eq!(
            target("v1/x:batchGet").as_deref(),
            Ok("https://api.example.com/api/v4/v1/x:batchGet")
        );
        assert_eq!(
            target("images:annotate").as_deref(),
            Ok("https://api.example.com/api/v4/images:annotate"),
            "a `resource:action` path is not a scheme"
        );
        assert_eq!(
            target("a/b;v=1/..x;y/%ef%bc%8e%ef%bc%8e%ef%bc%8e").as_deref(),
            Ok("https://api.example.com/api/v4/a/b;v=1/..x;y/%ef%bc%8e%ef%bc%8e%ef%bc%8e"),
            "parameters and look-alike dots are names unless the segment is one or two dots"
        );
        assert_eq!(
            target("files/a..b/.hidden/...").as_deref(),
            Ok("https://api.example.com/api/v4/files/a..b/.hidden/..."),
            "dots that are not whole segments are names"
        );
        let root = Url::parse("https://graph.example.com").expect("root base");
        assert_eq!(
            resolve(&root, "me", None).map(String::from),
            Ok("https://graph.example.com/me".to_owned())
        );
        assert_eq!(target("").as_deref(), Ok("https://api.example.com/api/v4/"));
    }

    #[test]
    fn every_escape_is_refused_by_name() {
        use TargetError::*;
        let cases = [
            ("..", DotSegment),
            ("../x", DotSegment),
            ("a/../../x", DotSegment),
            ("a/./b", DotSegment),
            ("%2e%2e/x", DotSegment),
            ("%2E%2e/x", DotSegment),
            (".%2e/x", DotSegment),
            ("%2e./x", DotSegment),
            ("a/%2e", DotSegment),
            ("%252e%252e/x", DotSegment),
            ("%25252e%25252E/x", DotSegment),
            ("a/..%2F..%2Fadmin", DotSegment),
            ("a/%2e%2e%2fadmin", DotSegment),
            ("a\\..\\x", Backslash),
            ("a/%5c..%5cx", Backslash),
            ("a/%255C", Backslash),
            ("a/%00", ControlCharacter),
            ("a/%0d%0aHost:%20evil", ControlCharacter),
            ("a/%7f", ControlCharacter),
            ("/evil.example/x", LeadingSlash),
            ("%2Fevil.example/x", LeadingSlash),
            ("%252F%252Fevil.example", LeadingSlash),
            ("https:/evil.example/x", Scheme),
            ("https%3A%2F%2Fevil.example", Scheme),
            ("javascript:", Scheme),
            ("a/..;/..;/admin", DotSegment),
            ("a/..%3B/admin", DotSegment),
            ("a/%2e%2e;x=1/admin", DotSegment),
            ("a/.;/b", DotSegment),
            ("a/%u002e%u002e/admin", DotSegment),
            ("a/%U002E./admin", DotSegment),
            ("a/%c0%ae%c0%ae/admin", DotSegment),
            ("a/%e0%80%ae/admin", DotSegment),
            ("a/%ef%bc%8e%ef%bc%8e/admin", DotSegment),
            ("a/%e2%80%a4%e2%80%a4/admin", DotSegment),
            ("user@evil.example/x", Authority),
            ("user%40evil.example/x", Authority),
            ("%2525252525252e", TooDeeplyEncoded),
            ("a?b", Malformed),
            ("a#b", Malformed),
        ];
        for (path, expected) in cases {
            assert_eq!(target(path), Err(expected), "{path}");
        }
    }

    #[test]
    fn the_token_parameter_is_removed_from_the_clients_query() {
        let cases = [
            ("access_token=x", None),
            ("a=1&access_token=x&b=2", Some("a=1&b=2")),
            ("access%5Ftoken=x&a=1", Some("a=1")),
            ("access_token&a=1", Some("a=1")),
            ("access_tokens=x", Some("access_tokens=x")),
        ];
        for (query, expected) in cases {
            let got = resolve_under(&base(), "/api/v4/", "me", Some(query), Some("access_token"))
                .expect("resolves");
            assert_eq!(got.query(), expected, "{query}");
        }
    }

    /// What a server that decodes everything (`%2F` included) and then removes dot segments
    /// would make of `path`: the segments it would route on.
    fn as_a_decoding_server_sees_it(path: &str) -> Vec<Vec<u8>> {
        let decoded = decode_fully(path).unwrap_or_default();
        let mut out: Vec<Vec<u8>> = Vec::new();
        for part in decoded.split(|&b| b == b'/' || b == b'\\') {
            // It drops `;` parameters and reads IIS's `%u002e` and overlong UTF-8 as dots.
            let mut name = part
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .to_vec();
            for form in [&b"%u002e"[..], b"%U002E", b"\xC0\xAE", b"\xE0\x80\xAE"] {
                while let Some(at) = name.windows(form.len()).position(|w| w == form) {
                    name.splice(at..at + form.len(), [b'.']);
                }
            }
            match name.as_slice() {
                b"." => {}
                b".." => {
                    out.pop();
                }
                _ => out.push(part.to_vec()),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// Any path the resolver accepts stays under the base: for us, and for a server that
        /// decodes everything before it removes dot segments.
        #[test]
        fn an_accepted_path_stays_under_the_base(
            path in proptest::collection::vec(
                prop_oneof![
                    Just("."), Just(".."), Just("/"), Just("%2e"), Just("%2E"), Just("%2f"),
                    Just("%2F"), Just("%25"), Just("2e"), Just("5c"), Just("%5c"), Just("\\"),
                    Just("@"), Just(":"), Just("a"), Just("https"), Just("%"), Just("2"),
                    Just("e"), Just("%40"), Just("%3a"), Just("x/"), Just(";"), Just("%3b"),
                    Just("%u002e"), Just("%c0%ae"),
                ],
                0..12,
            ).prop_map(|parts| parts.concat()),
            query in proptest::option::of("[a-z=&%2F.]{0,12}"),
        ) {
            let base = base();
            if let Ok(url) = resolve(&base, &path, query.as_deref()) {
                prop_assert_eq!(url.origin(), base.origin());
                prop_assert!(url.path().starts_with("/api/v4/"), "{}", url);
                let seen = as_a_decoding_server_sees_it(url.path());
                prop_assert!(
                    seen.len() >= 3 && seen[1] == b"api" && seen[2] == b"v4",
                    "{} is seen as {:?}", url, seen
                );
            }
        }
    }
}
