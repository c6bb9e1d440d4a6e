//! Strict `application/x-www-form-urlencoded` request bodies (RFC 6749 §3.2, Appendix B):
//! exactly that content type (only a `charset=utf-8` parameter), a bounded body, valid
//! UTF-8 after decoding, and no parameter sent twice. A parameter sent without a value is
//! treated as omitted (RFC 6749 §3.1); unknown parameters are ignored (but counted).

use super::error::OAuthError;
use crate::auth::{CLIENT_ASSERTION, CLIENT_ASSERTION_TYPE, FormClientAuth};
use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::collections::BTreeMap;

/// The media type of every OAuth request body.
pub const FORM_URLENCODED: &str = "application/x-www-form-urlencoded";

/// Most parameters one request may carry.
pub const MAX_PARAMETERS: usize = 64;

/// Longest parameter name, in bytes.
const MAX_NAME_LEN: usize = 64;

/// A parsed form: each parameter at most once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form {
    params: BTreeMap<String, String>,
}

impl Form {
    /// Reads and parses `body`, of at most `limit` bytes, after checking `headers`'
    /// content type.
    pub async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<Form, OAuthError> {
        check_content_type(headers)?;
        let too_large = || {
            OAuthError::invalid_request(format!(
                "the request body is larger than {limit} bytes (http.body_limit_bytes)"
            ))
        };
        // Refused before reading when the length is declared.
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
            Err(e) => {
                return Err(OAuthError::invalid_request(format!(
                    "reading the request body: {e}"
                )));
            }
        };
        Form::parse(&bytes)
    }

    /// Parses a form body.
    pub fn parse(body: &[u8]) -> Result<Form, OAuthError> {
        let mut params = BTreeMap::new();
        let mut count = 0usize;
        for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            count += 1;
            if count > MAX_PARAMETERS {
                return Err(OAuthError::invalid_request(format!(
                    "the form has more than {MAX_PARAMETERS} parameters"
                )));
            }
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let name = decode(name).ok_or_else(|| {
                OAuthError::invalid_request(
                    "a parameter name is not valid percent-encoded UTF-8".to_owned(),
                )
            })?;
            if name.is_empty() || name.len() > MAX_NAME_LEN {
                return Err(OAuthError::invalid_request(format!(
                    "a parameter name must be 1..={MAX_NAME_LEN} bytes"
                )));
            }
            let value = decode(value).ok_or_else(|| {
                OAuthError::invalid_request(format!("{name}: not valid percent-encoded UTF-8"))
            })?;
            if params.insert(name.clone(), value).is_some() {
                return Err(OAuthError::invalid_request(format!(
                    "{name}: sent more than once; send each parameter at most once"
                )));
            }
        }
        Ok(Form { params })
    }

    /// The value of `name`; `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The value of `name`, or `invalid_request` naming it (`why`: what it must be).
    pub fn require(&self, name: &str, why: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("{name}: required ({why})")))
    }

    /// Refuses `name` if present, saying `why`.
    pub fn refuse(&self, name: &str, why: &str) -> Result<(), OAuthError> {
        match self.get(name) {
            Some(_) => Err(OAuthError::invalid_request(format!("{name}: {why}"))),
            None => Ok(()),
        }
    }

    /// `name` as a boolean (`true` or `false`); absent is `false`.
    pub fn flag(&self, name: &str) -> Result<bool, OAuthError> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(OAuthError::invalid_request(format!(
                "{name}: must be true or false"
            ))),
        }
    }

    /// `name` as a number in `1..=max`; absent is `None`.
    pub fn number(&self, name: &str, max: u32) -> Result<Option<u32>, OAuthError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        match v.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) && v.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
            _ => Err(OAuthError::invalid_request(format!(
                "{name}: must be a whole number in 1..={max}"
            ))),
        }
    }

    /// The form's client authentication (RFC 7523), for the auth seam.
    pub fn client_auth(&self) -> FormClientAuth<'_> {
        FormClientAuth {
            assertion_type: self.get(CLIENT_ASSERTION_TYPE),
            assertion: self.get(CLIENT_ASSERTION),
            client_id: self.get("client_id"),
        }
    }
}

/// Refuses any content type but `application/x-www-form-urlencoded` (optionally with
/// `charset=utf-8`).
fn check_content_type(headers: &HeaderMap) -> Result<(), OAuthError> {
    let wrong = || {
        OAuthError::invalid_request(format!(
            "Content-Type: must be {FORM_URLENCODED} (RFC 6749, section 3.2)"
        ))
    };
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(wrong());
    };
    let value = value.to_str().map_err(|_| wrong())?;
    let mut parts = value.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|m| m.eq_ignore_ascii_case(FORM_URLENCODED))
    {
        return Err(wrong());
    }
    for param in parts.filter(|p| !p.is_empty()) {
        let ok = param.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("charset")
                && v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        });
        if !ok {
            return Err(wrong());
        }
    }
    Ok(())
}

/// Decodes one form-urlencoded component (`+` is a space, `%XX` a byte); `None` for a
/// bad escape or bytes that are not UTF-8.
fn decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(content_types: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in content_types {
            h.append(header::CONTENT_TYPE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn parses_decodes_and_treats_empty_values_as_omitted() {
        let f =
            Form::parse(b"grant_type=a%3Ab&scope=x+y&&empty=&bare&caf%C3%A9=%E2%9C%93").unwrap();
        assert_eq!(f.get("grant_type"), Some("a:b"));
        assert_eq!(f.get("scope"), Some("x y"));
        assert_eq!(f.get("empty"), None);
        assert_eq!(f.get("bare"), None);
        assert_eq!(f.get("café"), Some("✓"));
        let e = f.require("empty", "a scope").unwrap_err();
        assert_eq!(e.error, "invalid_request");
        assert!(e.description.starts_with("empty: required"), "{e:?}");
        assert_eq!(Form::parse(b"").unwrap(), Form::default());
    }

    #[test]
    fn a_parameter_sent_twice_is_refused_naming_it() {
        for body in [
            &b"scope=a&scope=b"[..],
            b"scope=a&scope=a",
            b"scope=&scope=a",
        ] {
            let e = Form::parse(body).unwrap_err();
            assert_eq!(e.error, "invalid_request");
            assert!(
                e.description.starts_with("scope: sent more than once"),
                "{e:?}"
            );
        }
        // Percent-encoding does not hide a repeat.
        let e = Form::parse(b"scope=a&%73cope=b").unwrap_err();
        assert!(e.description.starts_with("scope:"), "{e:?}");
    }

    #[test]
    fn bad_encodings_names_and_counts_are_refused() {
        for body in [&b"a=%zz"[..], b"a=%e", b"a=%ff", b"%ff=1", b"=1"] {
            assert_eq!(
                Form::parse(body).unwrap_err().error,
                "invalid_request",
                "{body:?}"
            );
        }
        let long = format!("{}=1", "n".repeat(MAX_NAME_LEN + 1));
        assert!(Form::parse(long.as_bytes()).is_err());
        let many: Vec<String> = (0..=MAX_PARAMETERS).map(|i| format!("p{i}=1")).collect();
        let e = Form::parse(many.join("&").as_bytes()).unwrap_err();
        assert!(e.description.contains("parameters"), "{e:?}");
        let fits: Vec<String> = (0..MAX_PARAMETERS).map(|i| format!("p{i}=1")).collect();
        Form::parse(fits.join("&").as_bytes()).unwrap();
    }

    #[test]
    fn flags_and_numbers_are_strict() {
        let f = Form::parse(b"t=true&f=false&x=yes&n=5&z=0&big=100000&s=+5").unwrap();
        assert!(f.flag("t").unwrap());
        assert!(!f.flag("f").unwrap());
        assert!(!f.flag("absent").unwrap());
        assert!(f.flag("x").is_err());
        assert_eq!(f.number("n", 10).unwrap(), Some(5));
        assert_eq!(f.number("absent", 10).unwrap(), None);
        for bad in ["z", "big", "s"] {
            let e = f.number(bad, 10).unwrap_err();
            assert!(e.description.starts_with(bad), "{e:?}");
        }
    }

    #[tokio::test]
    async fn only_the_form_content_type_and_bounded_bodies_are_read() {
        let body = || Body::from("grant_type=x");
        for ok in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
            "application/x-www-form-urlencoded;charset=\"utf-8\"",
        ] {
            Form::read(&headers(&[ok]), body(), 1024).await.unwrap();
        }
        for bad in [
            &["application/json"][..],
            &["application/x-www-form-urlencoded; charset=latin1"],
            &["multipart/form-data"],
            &[],
            &[
                "application/x-www-form-urlencoded",
                "application/x-www-form-urlencoded",
            ],
        ] {
            let e = Form::read(&headers(bad), body(), 1024).await.unwrap_err();
            assert!(e.description.starts_with("Content-Type"), "{bad:?}: {e:?}");
        }
        let form = headers(&[FORM_URLENCODED]);
        let big = Body::from(format!("a={}", "x".repeat(2000)));
        let e = Form::read(&form, big, 1024).await.unwrap_err();
        assert!(e.description.contains("larger than 1024"), "{e:?}");
        // A declared length over the limit is refused before anything is read.
        let mut declared = form.clone();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5000"));
        let e = Form::read(&declared, body(), 1024).await.unwrap_err();
        assert!(e.description.contains("larger than"), "{e:?}");
        let exact = Body::from(format!("a={}", "x".repeat(1022)));
        Form::read(&form, exact, 1024).await.unwrap();
    }

    #[test]
    fn client_authentication_comes_from_its_parameters() {
        let f = Form::parse(
            b"client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a.b.c&client_id=me",
        )
        .unwrap();
        let auth = f.client_auth();
        assert_eq!(auth.assertion, Some("a.b.c"));
        assert_eq!(auth.assertion_type, Some(crate::auth::JWT_BEARER));
        assert_eq!(auth.client_id, Some("me"));
    }
}
