//! Getting the bearer token out of a request and splitting a compact JWS into its
//! parts. Nothing here trusts what it decodes: the payload is read only to route the
//! token to an issuer, and every claim is checked after the signature.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Error;

/// Tokens longer than this are refused before any decoding work. Real OIDC tokens,
/// even with many groups, are a few KiB.
pub(crate) const MAX_TOKEN_LEN: usize = 64 * 1024;

/// The bearer token of a request, or `None` when it carries no `Authorization` header
/// or a scheme other than Bearer (matched case-insensitively: the Python client sends
/// `bearer`).
pub(crate) fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, Error> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Error::Malformed("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| Error::Malformed("Authorization header is not visible ASCII"))?;
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim();
    Ok((!token.is_empty()).then_some(token))
}

/// The protected header fields chaperone reads. Others (`typ`, `cty`, `x5t`) are
/// ignored; `jku`/`jwk`/`x5u` are ignored too, since keys only ever come from the
/// issuer's configured source.
#[derive(Debug, Deserialize)]
pub(crate) struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// A compact JWS split and decoded, signature not yet checked.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    pub header: Header,
    pub claims: Map<String, Value>,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The signature, still base64url.
    pub signature: &'a str,
}

impl Parsed<'_> {
    /// The unverified `iss`, used only to pick whose keys check the signature.
    pub fn issuer(&self) -> Result<&str, Error> {
        match self.claims.get("iss") {
            Some(Value::String(iss)) => Ok(iss),
            Some(_) => Err(Error::InvalidClaim {
                claim: "iss".into(),
                reason: "must be a string".into(),
            }),
            None => Err(Error::InvalidClaim {
                claim: "iss".into(),
                reason: "is required".into(),
            }),
        }
    }
}

pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, Error> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Error::Malformed("token is longer than 64 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Malformed(
            "not a JWT: expected three dot-separated parts",
        ));
    };
    let signing_input = &token[..header.len() + 1 + payload.len()];
    let header_json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Error::Malformed("header is not base64url"))?;
    let header: Header = serde_json::from_slice(&header_json)
        .map_err(|_| Error::Malformed("header is not a JSON object with a string alg"))?;
    if header.crit.is_some() {
        // RFC 7515 §4.1.11: a recipient must reject extensions it does not understand.
        return Err(Error::Malformed(
            "header lists critical extensions, none of which are supported",
        ));
    }
    let payload_json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| Error::Malformed("payload is not base64url"))?;
    let claims: Map<String, Value> = serde_json::from_slice(&payload_json)
        .map_err(|_| Error::Malformed("payload is not a JSON object"))?;
    Ok(Parsed {
        header,
        claims,
        signing_input,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn finds_bearer_tokens_in_any_case() {
        assert_eq!(bearer(&headers(&["Bearer abc"])).unwrap(), Some("abc"));
        assert_eq!(bearer(&headers(&["bearer  abc "])).unwrap(), Some("abc"));
        assert_eq!(bearer(&headers(&["BEARER abc"])).unwrap(), Some("abc"));
        assert_eq!(bearer(&headers(&["Basic abc"])).unwrap(), None);
        assert_eq!(bearer(&headers(&["Bearer "])).unwrap(), None);
        assert_eq!(bearer(&headers(&[])).unwrap(), None);
        assert!(bearer(&headers(&["Bearer a", "Bearer b"])).is_err());
    }

    #[test]
    fn splits_a_compact_jws() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k"}"#);
        let p = URL_SAFE_NO_PAD.encode(br#"{"iss":"https://i"}"#);
        let token = format!("{h}.{p}.c2ln");
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.header.alg, "RS256");
        assert_eq!(parsed.header.kid.as_deref(), Some("k"));
        assert_eq!(parsed.issuer().unwrap(), "https://i");
        assert_eq!(parsed.signing_input, format!("{h}.{p}"));
        assert_eq!(parsed.signature, "c2ln");
    }

    #[test]
    fn refuses_what_is_not_a_jws() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#);
        let p = URL_SAFE_NO_PAD.encode(br#"{"iss":"x"}"#);
        for (token, why) in [
            (
                "abc".to_owned(),
                "not a JWT: expected three dot-separated parts",
            ),
            (
                "a.b.c.d".to_owned(),
                "not a JWT: expected three dot-separated parts",
            ),
            (format!("!!.{p}.sig"), "header is not base64url"),
            (format!("{h}=.{p}.sig"), "header is not base64url"),
            (
                format!("{}.{p}.sig", URL_SAFE_NO_PAD.encode(b"[1]")),
                "header is not a JSON object with a string alg",
            ),
            (
                format!("{h}.{}.sig", URL_SAFE_NO_PAD.encode(b"nope")),
                "payload is not a JSON object",
            ),
        ] {
            match parse(&token) {
                Err(Error::Malformed(m)) => assert_eq!(m, why, "{token}"),
                other => panic!("{token}: {other:?}"),
            }
        }
    }
}
