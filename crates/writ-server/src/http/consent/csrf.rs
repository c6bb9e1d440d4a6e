//! Cross-site request forgery on the consent form: a decision counts only when the form
//! was filled in on the page Writ served to this browser.
//!
//! The page's GET sets a `__Host-` cookie of 256 random bits ([`CSRF_COOKIE`]: Secure,
//! HttpOnly, SameSite=Strict, Path=/) unless the browser sent a well-formed one, and puts
//! in the form `csrf` = base64url(MAC(blake3(link) ‖ cookie)) under a key derived from the
//! server key ([`CSRF_CONTEXT`]). The POST must carry both, and the MAC must match in
//! constant time: another site can make the browser send the cookie but cannot read the
//! page for the token, and a token for one link does not decide another. When the
//! browser says where the POST comes from (`Origin`, `Sec-Fetch-Site`), it must be Writ's
//! own origin (the issuer's).

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The CSRF cookie's name; `__Host-`: only ever set by this origin, over HTTPS, for `/`.
pub const CSRF_COOKIE: &str = "__Host-writ-csrf";
/// The MAC context of the form's CSRF token.
pub const CSRF_CONTEXT: &str = "writ consent csrf v1";

/// Length of a cookie's random value, in bytes.
const COOKIE_BYTES: usize = 32;

/// The one value of cookie `name` among the request's `Cookie` headers; `None` when it
/// is absent or sent twice (a second cookie of the same name is never guessed between).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((n, v)) = pair.trim().split_once('=')
                && n == name
            {
                if found.is_some() {
                    return None;
                }
                found = Some(v.trim_matches('"'));
            }
        }
    }
    found
}

/// A `Set-Cookie` value for a `__Host-` cookie: Secure, HttpOnly, Path=/, `same_site`
/// (`Strict` or `Lax`), and `Max-Age` when given (else it ends with the browser session).
pub fn set_cookie(name: &str, value: &str, same_site: &str, max_age: Option<u64>) -> String {
    let age = max_age.map_or_else(String::new, |s| format!("; Max-Age={s}"));
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}{age}")
}

/// The browser's CSRF cookie value, decoded: 32 bytes of base64url, or nothing.
pub fn csrf_cookie(headers: &HeaderMap) -> Option<[u8; COOKIE_BYTES]> {
    decode32(cookie(headers, CSRF_COOKIE)?)
}

/// A new random cookie value (its bytes and base64url text).
pub fn new_cookie() -> ([u8; COOKIE_BYTES], String) {
    let bytes: [u8; COOKIE_BYTES] = rand::random();
    (bytes, URL_SAFE_NO_PAD.encode(bytes))
}

/// What the form's CSRF token is MAC'd over: the link's hash and the cookie.
pub fn token_input(link: &str, cookie: &[u8; COOKIE_BYTES]) -> [u8; 64] {
    let mut input = [0u8; 64];
    input[..32].copy_from_slice(blake3::hash(link.as_bytes()).as_bytes());
    input[32..].copy_from_slice(cookie);
    input
}

/// The form's token from its MAC.
pub fn encode_token(mac: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(mac)
}

/// Does the form's `presented` token equal `expected` (constant time)?
pub fn token_matches(presented: &str, expected: &[u8; 32]) -> bool {
    decode32(presented).is_some_and(|p| writ_core::token::ct_eq_32(&p, expected))
}

/// Refuses a POST the browser says comes from elsewhere than `issuer` (Writ's own
/// origin, `https://host[:port]`): `Origin`, when sent, must be it, and
/// `Sec-Fetch-Site`, when sent, `same-origin`. `Err` says which header refused.
///
/// `Origin: null` says nothing: it is what a browser sends for the page's own form,
/// whose `Referrer-Policy` is `no-referrer` (Fetch, "serializing a request origin"), and
/// `Sec-Fetch-Site` still tells a cross-site request apart.
pub fn check_origin(headers: &HeaderMap, issuer: &str) -> Result<(), &'static str> {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (None, _) => {}
        (Some(origin), None) if origin.as_bytes() == b"null" => {}
        (Some(origin), None) => {
            let same = origin
                .to_str()
                .is_ok_and(|o| normal_origin(o) == normal_origin(issuer));
            if !same {
                return Err("Origin");
            }
        }
        (Some(_), Some(_)) => return Err("Origin"),
    }
    let mut sites = headers.get_all("sec-fetch-site").iter();
    match (sites.next(), sites.next()) {
        (None, _) => Ok(()),
        (Some(site), None) if site.as_bytes() == b"same-origin" => Ok(()),
        _ => Err("Sec-Fetch-Site"),
    }
}

/// An origin compared without case and without the default port (`https://h:443`).
fn normal_origin(origin: &str) -> String {
    let lower = origin.trim_end_matches('/').to_ascii_lowercase();
    match lower.strip_suffix(":443") {
        Some(rest) if rest.starts_with("https://") => rest.to_owned(),
        _ => lower,
    }
}

/// Exactly 32 bytes of unpadded base64url.
pub fn decode32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 43 {
        return None;
    }
    let mut out = [0u8; 32];
    match URL_SAFE_NO_PAD.decode_slice(text, &mut out) {
        Ok(32) => Some(out),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn cookies_are_read_once_and_exactly() {
        let (bytes, text) = new_cookie();
        let h = headers(&[("cookie", &format!("a=1; {CSRF_COOKIE}={text}; b=2"))]);
        assert_eq!(csrf_cookie(&h), Some(bytes));
        // Split over two headers (HTTP/2 crumbs) is still one cookie.
        let h = headers(&[
            ("cookie", "a=1"),
            ("cookie", &format!("{CSRF_COOKIE}={text}")),
        ]);
        assert_eq!(csrf_cookie(&h), Some(bytes));
        // Twice: neither is believed.
        let (_, other) = new_cookie();
        let h = headers(&[(
            "cookie",
            &format!("{CSRF_COOKIE}={text}; {CSRF_COOKIE}={other}"),
        )]);
        assert_eq!(csrf_cookie(&h), None);
        for bad in ["", "short", &format!("{text}A"), &"!".repeat(43)] {
            let h = headers(&[("cookie", &format!("{CSRF_COOKIE}={bad}"))]);
            assert_eq!(csrf_cookie(&h), None, "{bad}");
        }
        assert_eq!(csrf_cookie(&headers(&[])), None);
        assert_eq!(
            set_cookie(CSRF_COOKIE, "v", "Strict", None),
            "__Host-writ-csrf=v; Path=/; Secure; HttpOnly; SameSite=Strict"
        );
    }

    #[test]
    fn the_token_binds_the_link_and_the_cookie() {
        let key = writ_core::KeyRing::new(vec![writ_core::ServerKey {
            id: 1,
            key: [7; 32],
        }])
        .unwrap();
        let mac = |link: &str, c: &[u8; 32]| key.mac(CSRF_CONTEXT, &token_input(link, c));
        let (cookie, _) = new_cookie();
        let (other_cookie, _) = new_cookie();
        let token = encode_token(&mac("link-a", &cookie));
        assert!(token_matches(&token, &mac("link-a", &cookie)));
        assert!(!token_matches(&token, &mac("link-b", &cookie)));
        assert!(!token_matches(&token, &mac("link-a", &other_cookie)));
        assert!(!token_matches("", &mac("link-a", &cookie)));
        assert!(!token_matches(&token[1..], &mac("link-a", &cookie)));
    }

    #[test]
    fn only_writs_own_origin_may_post() {
        let issuer = "https://writ.example:8443";
        assert_eq!(check_origin(&headers(&[]), issuer), Ok(()));
        for ok in [
            &[("origin", "https://writ.example:8443")][..],
            &[("origin", "HTTPS://Writ.Example:8443")],
            &[("sec-fetch-site", "same-origin")],
            &[
                ("origin", "https://writ.example:8443"),
                ("sec-fetch-site", "same-origin"),
            ],
            // The page's own form under `Referrer-Policy: no-referrer`.
            &[("origin", "null"), ("sec-fetch-site", "same-origin")],
        ] {
            assert_eq!(check_origin(&headers(ok), issuer), Ok(()), "{ok:?}");
        }
        for (bad, which) in [
            (&[("origin", "https://evil.example")][..], "Origin"),
            (&[("origin", "http://writ.example:8443")], "Origin"),
            (
                &[
                    ("origin", "https://writ.example:8443"),
                    ("origin", "https://writ.example:8443"),
                ],
                "Origin",
            ),
            (&[("sec-fetch-site", "cross-site")], "Sec-Fetch-Site"),
            (
                &[("origin", "null"), ("sec-fetch-site", "cross-site")],
                "Sec-Fetch-Site",
            ),
            (&[("sec-fetch-site", "same-site")], "Sec-Fetch-Site"),
            (&[("sec-fetch-site", "none")], "Sec-Fetch-Site"),
        ] {
            assert_eq!(check_origin(&headers(bad), issuer), Err(which), "{bad:?}");
        }
        // The default port may be left out on either side.
        assert_eq!(
            check_origin(
                &headers(&[("origin", "https://writ.example")]),
                "https://writ.example:443"
            ),
            Ok(())
        );
    }
}
