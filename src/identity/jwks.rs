//! JSON Web Key Sets: turning an issuer's published keys into verification keys, and
//! deciding which algorithm each key may verify.
//!
//! Keys are parsed one by one and unusable ones (encryption keys, symmetric keys,
//! unknown curves, short RSA moduli) are skipped rather than failing the whole set, so
//! an IdP that publishes an `RSA-OAEP` key next to its signing keys still works.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// ring refuses to verify with shorter RSA keys; skipping them at load time gives a
/// clear log line instead of a "bad signature" later.
const MIN_RSA_BITS: usize = 2048;

/// The kind of public key, which fixes the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn describe(self) -> &'static str {
        match self {
            KeyKind::Rsa => "an RSA key",
            KeyKind::P256 => "an EC P-256 key",
            KeyKind::P384 => "an EC P-384 key",
            KeyKind::Ed25519 => "an Ed25519 key",
        }
    }
}

/// One verification key.
pub(crate) struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's `alg`, when it pins one.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
    /// The public key material (base64url components), to notice removed keys.
    fingerprint: String,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`. This is the guard against
    /// algorithm confusion: an RSA key never verifies an HMAC or ECDSA signature, a
    /// P-256 key never an ES384 one, and a key that pins `alg` verifies only that.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|pinned| pinned != alg) {
            return false;
        }
        use Algorithm::*;
        matches!(
            (self.kind, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::P256, ES256)
                | (KeyKind::P384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }

    /// "an RSA key pinned to RS256", for error messages.
    pub fn describe(&self) -> String {
        match self.alg {
            Some(alg) => format!("{} pinned to {alg:?}", self.kind.describe()),
            None => self.kind.describe().to_owned(),
        }
    }

    fn same_as(&self, other: &Key) -> bool {
        self.kid == other.kid && self.kind == other.kind && self.fingerprint == other.fingerprint
    }
}

/// The usable keys of one JWKS document.
pub(crate) struct KeySet {
    pub keys: Vec<Key>,
}

impl KeySet {
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Whether some key of `self` is missing from `newer`: tokens it verified must not
    /// stay trusted from the cache.
    pub fn lost_keys_in(&self, newer: &KeySet) -> bool {
        self.keys
            .iter()
            .any(|k| !newer.keys.iter().any(|n| n.same_as(k)))
    }
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// Parses a JWKS document. Fails when it is not a JWKS or holds no usable signing key
/// (an IdP briefly serving an empty set must not wipe the last good keys).
pub(crate) fn parse(bytes: &[u8]) -> Result<KeySet, String> {
    let doc: Document = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JWKS document (an object with a keys array): {e}"))?;
    let mut keys = Vec::with_capacity(doc.keys.len());
    for (i, value) in doc.keys.into_iter().enumerate() {
        match parse_key(value) {
            Ok(key) => keys.push(key),
            Err(why) => tracing::debug!(index = i, reason = %why, "skipping JWKS key"),
        }
    }
    if keys.is_empty() {
        return Err("the JWKS has no usable signing key".into());
    }
    Ok(KeySet { keys })
}

fn parse_key(value: serde_json::Value) -> Result<Key, String> {
    let raw: RawKey = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err(format!("use is {:?}, not sig", raw.use_));
    }
    let alg = match raw.alg.as_deref() {
        None => None,
        Some(name) => Some(
            name.parse::<Algorithm>()
                .map_err(|_| format!("alg {name:?} is not a signature algorithm"))?,
        ),
    };
    let field = |v: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
        let text = v.as_deref().ok_or_else(|| format!("missing {name}"))?;
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| format!("{name} is not base64url"))
    };
    let (kind, key, fingerprint) = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => {
            let n = field(&raw.n, "n")?;
            let e = field(&raw.e, "e")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA modulus of about {bits} bits is too short"));
            }
            let fp = format!("{:?}.{:?}", raw.n, raw.e);
            (
                KeyKind::Rsa,
                DecodingKey::from_rsa_raw_components(&n, &e),
                fp,
            )
        }
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let (kind, len) = if crv == "P-256" {
                (KeyKind::P256, 32)
            } else {
                (KeyKind::P384, 48)
            };
            let x = field(&raw.x, "x")?;
            let y = field(&raw.y, "y")?;
            if x.len() != len || y.len() != len {
                return Err(format!("{crv} coordinates must be {len} bytes"));
            }
            // ring takes the uncompressed SEC1 point, which is what this builds.
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let fp = format!("{:?}.{:?}", raw.x, raw.y);
            (kind, DecodingKey::from_ec_der(&point), fp)
        }
        ("OKP", Some("Ed25519")) => {
            let x = field(&raw.x, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 x must be 32 bytes".into());
            }
            let fp = format!("{:?}", raw.x);
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x), fp)
        }
        (kty, crv) => return Err(format!("unsupported key type {kty} {crv:?}")),
    };
    let key = Key {
        kid: raw.kid,
        kind,
        alg,
        key,
        fingerprint,
    };
    if let Some(alg) = alg {
        if !key.accepts(alg) {
            return Err(format!("alg {alg:?} does not fit {}", kind.describe()));
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256: &str = r#"{"kty":"EC","crv":"P-256","kid":"ec","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn skips_unusable_keys_and_keeps_the_rest() {
        let doc = format!(
            r#"{{"keys":[{P256},{{"kty":"oct","k":"c2VjcmV0"}},{{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}},{{"kty":"RSA","kid":"short","n":"AQAB","e":"AQAB"}}]}}"#
        );
        let set = parse(doc.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert!(set.has_kid("ec"));
        let key = &set.keys[0];
        assert!(key.accepts(Algorithm::ES256));
        for alg in [
            Algorithm::ES384,
            Algorithm::RS256,
            Algorithm::HS256,
            Algorithm::EdDSA,
        ] {
            assert!(!key.accepts(alg), "{alg:?}");
        }
    }

    #[test]
    fn refuses_a_set_without_usable_keys() {
        assert_eq!(
            parse(br#"{"keys":[]}"#).err().unwrap(),
            "the JWKS has no usable signing key"
        );
        assert!(parse(b"[]").is_err());
    }

    #[test]
    fn a_pinned_alg_must_fit_the_key() {
        let doc = P256.replace(r#""kty":"EC""#, r#""kty":"EC","alg":"RS256""#);
        assert!(parse(format!(r#"{{"keys":[{doc}]}}"#).as_bytes()).is_err());
    }

    #[test]
    fn notices_removed_keys() {
        let one = parse(format!(r#"{{"keys":[{P256}]}}"#).as_bytes()).unwrap();
        let renamed = P256.replace(r#""kid":"ec""#, r#""kid":"ec2""#);
        let two = parse(format!(r#"{{"keys":[{P256},{renamed}]}}"#).as_bytes()).unwrap();
        assert!(!one.lost_keys_in(&two));
        assert!(two.lost_keys_in(&one));
    }
}
