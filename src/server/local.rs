//! Requests to a server without authentication. Such a server listens on localhost only and trusts
//! whoever can reach it; that trust must not extend to a web page in the user's browser, which can
//! reach localhost too: through DNS rebinding (a page's own host name re-pointed at 127.0.0.1, so
//! the browser sends that name as `Host`) or by sending requests across origins (CSRF). Owns which
//! `Host` and `Origin` values count as local; the middleware in `server` refuses the rest with 403.

use super::error::ErrorKind;
use super::ApiError;
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, Uri};
use std::net::IpAddr;

/// `localhost`, an address in 127.0.0.0/8, or `::1` (IPv6 in brackets, as in URLs).
fn loopback_name(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let ip = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A `Host` value (`host[:port]`) naming this machine's loopback interface.
pub fn loopback_host(value: &str) -> bool {
    match value.parse::<Authority>() {
        // A Host header carries no user info; `user@localhost` is not a host name.
        Ok(a) => !a.as_str().contains('@') && loopback_name(a.host()),
        Err(_) => false,
    }
}

/// An `Origin` value (`scheme://host[:port]`) of a page served from localhost over http(s).
pub fn loopback_origin(value: &str) -> bool {
    let Ok(uri) = value.parse::<Uri>() else {
        return false;
    };
    let path_ok = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
    matches!(uri.scheme_str(), Some("http" | "https"))
        && path_ok
        && uri
            .authority()
            .is_some_and(|a| !a.as_str().contains('@') && loopback_name(a.host()))
}

fn refuse(code: &'static str, message: String) -> ApiError {
    tracing::warn!(code, %message, "refused a request to the unauthenticated server");
    ApiError::new(ErrorKind::Forbidden, code, message)
}

/// Checks a request to a server without authentication: its host (the `Host` header, and the
/// authority of an absolute URI or an HTTP/2 request) must be a loopback name, and its `Origin`,
/// when there is one, a loopback origin.
pub fn check(headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let host = headers.get(header::HOST);
    if host.is_none() && uri.authority().is_none() {
        return Err(refuse(
            "bad_host",
            "the request names no host; without authentication only requests to localhost are answered".into(),
        ));
    }
    let hosts = host
        .map(|h| h.to_str().unwrap_or("").to_string())
        .into_iter()
        .chain(uri.authority().map(|a| a.to_string()));
    for h in hosts {
        if !loopback_host(&h) {
            return Err(refuse(
                "bad_host",
                format!(
                    "host {h:?} is not localhost: without authentication (--auth-file) only requests to localhost, 127.0.0.1 or [::1] are answered"
                ),
            ));
        }
    }
    for origin in headers.get_all(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        if !loopback_origin(o) {
            return Err(refuse(
                "bad_origin",
                format!(
                    "requests from origin {o:?} are refused: without authentication (--auth-file) only pages served from localhost may call the API"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "127.3.4.5:65535",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:8080",
            "0.0.0.0:8080",
            "[::2]:80",
            "user@localhost",
            "localhost/x",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn origins() {
        for ok in [
            "http://localhost:8080",
            "http://127.0.0.1:8080",
            "https://localhost",
            "http://[::1]:3000",
        ] {
            assert!(loopback_origin(ok), "{ok}");
        }
        for bad in [
            "null",
            "",
            "http://evil.example",
            "http://localhost.evil.example:8080",
            "file://localhost",
            "ws://localhost:8080",
            "http://user@localhost:8080",
            "localhost:8080",
        ] {
            assert!(!loopback_origin(bad), "{bad}");
        }
    }

    #[test]
    fn requests() {
        let req = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            check(&h, &"/tasks".parse().unwrap()).map_err(|e| e.code)
        };
        assert_eq!(req(&[("host", "127.0.0.1:8080")]), Ok(()));
        assert_eq!(
            req(&[
                ("host", "localhost:8080"),
                ("origin", "http://localhost:8080")
            ]),
            Ok(())
        );
        assert_eq!(req(&[]), Err("bad_host"));
        assert_eq!(req(&[("host", "rebound.example:8080")]), Err("bad_host"));
        assert_eq!(
            req(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "https://evil.example")
            ]),
            Err("bad_origin")
        );
        // An absolute URI's authority counts too.
        let h: HeaderMap = [(header::HOST, "localhost".parse().unwrap())]
            .into_iter()
            .collect();
        assert!(check(&h, &"http://evil.example/tasks".parse().unwrap()).is_err());
    }
}
