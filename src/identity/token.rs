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

/// The WebSocket subprotocol that carries a bearer token (`<prefix><base64url token>`):
/// browsers cannot set `Authorization` on a WebSocket, so the API server reads one
/// here too.
pub const WEBSOCKET_BEARER_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// The bearer token a WebSocket upgrade carries as a subprotocol, read as the API
/// server's `ProtocolAuthenticator` reads it: only on a WebSocket upgrade; two of them,
/// one that is not base64url of UTF-8, or one with no other subprotocol beside it (the
/// server must have one left to agree on) is an error; an empty one is none.
pub(crate) fn websocket_bearer(headers: &http::HeaderMap) -> Result<Option<String>, Error> {
    if !crate::headers::is_websocket_upgrade(headers) {
        return Ok(None);
    }
    let mut token = None;
    let mut others = 0;
    for value in headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
        let value = value
            .to_str()
            .map_err(|_| Error::Malformed("Sec-WebSocket-Protocol is not visible ASCII"))?;
        for protocol in value.split(',').map(str::trim) {
            let Some(encoded) = protocol.strip_prefix(WEBSOCKET_BEARER_PREFIX) else {
                others += 1;
                continue;
            };
            if token.is_some() {
                return Err(Error::Malformed(
                    "more than one base64url.bearer.authorization.k8s.io subprotocol",
                ));
            }
            if encoded.len() > MAX_TOKEN_LEN {
                return Err(Error::Malformed("token is longer than 64 KiB"));
            }
            let decoded = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| {
                Error::Malformed("the base64url.bearer.authorization.k8s.io token is not base64url")
            })?;
            let decoded = String::from_utf8(decoded).map_err(|_| {
                Error::Malformed("the base64url.bearer.authorization.k8s.io token is not UTF-8")
            })?;
            token = Some(decoded);
        }
    }
    let token = token.filter(|t| !t.is_empty());
    if token.is_some() && others == 0 {
        return Err(Error::Malformed(
            "a base64url.bearer.authorization.k8s.io subprotocol needs another subprotocol beside it",
        ));
    }
    Ok(token)
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

/// A compact JWS split and decoded, signature not yet checked. No `Debug`: the signing
/// input and signature together are the token.
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

    /// The cases of the API server's `protocol_test.go` (`TestBearerToken`,
    /// `TestAuthenticateRequestBadValue`), plus the refusals its code makes.
    #[test]
    fn finds_a_websocket_bearer_token_as_the_api_server_does() {
        let upgrade = |protocols: &[&str]| {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONNECTION, "upgrade".parse().unwrap());
            h.insert(http::header::UPGRADE, "websocket".parse().unwrap());
            for p in protocols {
                h.append(http::header::SEC_WEBSOCKET_PROTOCOL, p.parse().unwrap());
            }
            h
        };
        let token = |protocols: &[&str]| websocket_bearer(&upgrade(protocols));
        // "dG9rZW4" is base64url of "token".
        // (the subprotocol header values, the token or a piece of the error)
        type Case<'a> = (&'a [&'a str], Result<Option<&'a str>, &'a str>);
        let cases: [Case; 10] = [
            (&[], Ok(None)),
            (&[""], Ok(None)),
            (&["undefined"], Ok(None)),
            (&["other-protocol"], Ok(None)),
            (&["base64url.bearer.authorization.k8s.io."], Ok(None)),
            (
                &["base64url.bearer.authorization.k8s.io.dG9rZW4", "dummy, dummy2"],
                Ok(Some("token")),
            ),
            (
                &["base64url.bearer.authorization.k8s.io.dG9rZW4,dummy"],
                Ok(Some("token")),
            ),
            (
                &["base64url.bearer.authorization.k8s.io.dG9rZW4"],
                Err("needs another subprotocol"),
            ),
            (
                &["base64url.bearer.authorization.k8s.io.dG9rZW4, base64url.bearer.authorization.k8s.io.dG9rZW4, v5.channel.k8s.io"],
                Err("more than one"),
            ),
            (
                &["base64url.bearer.authorization.k8s.io.dG9rZW4=, v5.channel.k8s.io"],
                Err("not base64url"),
            ),
        ];
        for (protocols, want) in cases {
            match (token(protocols), want) {
                (Ok(got), Ok(want)) => assert_eq!(got.as_deref(), want, "{protocols:?}"),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{protocols:?}: {e}"),
                (got, want) => panic!("{protocols:?}: got {got:?}, wanted {want:?}"),
            }
        }
        // Not UTF-8 (0xff).
        assert!(token(&["base64url.bearer.authorization.k8s.io._w, v5.channel.k8s.io"]).is_err());
        // Only on a WebSocket upgrade (`TestAuthenticateRequestBadValue`'s first case).
        let mut plain = HeaderMap::new();
        plain.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "base64url.bearer.authorization.k8s.io.dG9rZW4,dummy"
                .parse()
                .unwrap(),
        );
        assert_eq!(websocket_bearer(&plain).unwrap(), None);
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
                Err(other) => panic!("{token}: {other}"),
                Ok(_) => panic!("{token}: parsed"),
            }
        }
    }
}
