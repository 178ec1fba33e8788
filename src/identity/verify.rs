//! Checking one token against the issuer its `iss` routed it to: the algorithm, the
//! key, the signature, then the registered and required claims.
//!
//! Signatures are checked with `jsonwebtoken::crypto::verify` (ring underneath) while
//! the claim checks are done here rather than by `jsonwebtoken::Validation`, for two
//! reasons: each failure needs its own error with its own message, and the clock must
//! be injectable so expiry is testable (and cached tokens expire on the same clock).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::claims::ClaimPath;
use super::jwks::{Key, KeySet};
use super::keys::IssuerKeys;
use super::token::Parsed;
use super::Error;

/// What a token of one issuer must satisfy.
pub(crate) struct Policy {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: i64,
    pub required: Vec<(ClaimPath, Value)>,
}

impl Policy {
    pub fn new(
        issuer: &str,
        audiences: &[String],
        algorithms: &[String],
        leeway: std::time::Duration,
        required: &BTreeMap<String, Value>,
    ) -> Result<Policy, String> {
        let algorithms = algorithms
            .iter()
            .map(|a| {
                a.parse::<Algorithm>()
                    .map_err(|_| format!("unknown algorithm {a}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            issuer: issuer.to_owned(),
            audiences: audiences.to_vec(),
            algorithms,
            leeway: i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX),
            required: required
                .iter()
                .map(|(k, v)| (ClaimPath::new(k), v.clone()))
                .collect(),
        })
    }
}

/// Finds the key(s) the token may be checked with and checks its signature. Returns
/// the algorithm the token was verified with.
pub(crate) async fn signature(
    policy: &Policy,
    keys: &Arc<IssuerKeys>,
    token: &Parsed<'_>,
    checks: &AtomicU64,
) -> Result<Algorithm, Error> {
    let name = token.header.alg.as_str();
    // `none`, `HS*` and anything unknown never reach a key: the allowed list holds
    // asymmetric algorithms only (config validation refuses the rest).
    let alg = name
        .parse::<Algorithm>()
        .ok()
        .filter(|a| policy.algorithms.contains(a))
        .ok_or_else(|| Error::DisallowedAlgorithm {
            alg: shorten(name),
            reason: format!("is not accepted for issuer {}", policy.issuer),
        })?;
    let mut set = keys.current();
    match token.header.kid.as_deref() {
        Some(kid) => {
            if !set.as_ref().is_some_and(|s| s.has_kid(kid)) {
                set = keys.refresh_on_demand(set.as_ref()).await;
            }
            let set = have_keys(set, keys)?;
            let named: Vec<&Key> = set
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if named.is_empty() {
                return Err(Error::UnknownKeyId {
                    issuer: policy.issuer.clone(),
                    kid: Some(shorten(kid)),
                });
            }
            let usable: Vec<&Key> = named.iter().copied().filter(|k| k.accepts(alg)).collect();
            if usable.is_empty() {
                return Err(Error::DisallowedAlgorithm {
                    alg: name.to_owned(),
                    reason: format!(
                        "does not match key {:?}, {}",
                        shorten(kid),
                        named[0].describe()
                    ),
                });
            }
            check_any(&usable, token, alg, checks)
        }
        None => {
            if set.is_none() {
                set = keys.refresh_on_demand(None).await;
            }
            let set = have_keys(set, keys)?;
            // Without a kid every key that can verify this algorithm is tried.
            let usable: Vec<&Key> = set.keys.iter().filter(|k| k.accepts(alg)).collect();
            if usable.is_empty() {
                return Err(Error::UnknownKeyId {
                    issuer: policy.issuer.clone(),
                    kid: None,
                });
            }
            check_any(&usable, token, alg, checks)
        }
    }
}

fn have_keys(set: Option<Arc<KeySet>>, keys: &IssuerKeys) -> Result<Arc<KeySet>, Error> {
    set.ok_or_else(|| Error::KeysUnavailable {
        issuer: keys.issuer.clone(),
    })
}

fn check_any(
    candidates: &[&Key],
    token: &Parsed<'_>,
    alg: Algorithm,
    checks: &AtomicU64,
) -> Result<Algorithm, Error> {
    for key in candidates {
        // Defence in depth: `accepts` already matched the key family to `alg`, and
        // `verify` must never see a mismatch (it panics on HMAC with an RSA key).
        debug_assert!(key.accepts(alg));
        checks.fetch_add(1, Ordering::Relaxed);
        match jsonwebtoken::crypto::verify(
            token.signature,
            token.signing_input.as_bytes(),
            &key.key,
            alg,
        ) {
            Ok(true) => return Ok(alg),
            Ok(false) => {}
            Err(_) => return Err(Error::Malformed("signature is not base64url")),
        }
    }
    Err(Error::BadSignature)
}

/// The time window and the claims. Returns the token's `exp`.
pub(crate) fn claims(policy: &Policy, claims: &Map<String, Value>, now: i64) -> Result<i64, Error> {
    if claims.get("iss").and_then(Value::as_str) != Some(policy.issuer.as_str()) {
        // Routing already matched `iss` exactly; this guards against a future change
        // to routing silently dropping the check.
        return Err(Error::UnknownIssuer(String::new()));
    }
    let exp = time_claim(claims, "exp")?.ok_or_else(|| Error::InvalidClaim {
        claim: "exp".into(),
        reason: "is required".into(),
    })?;
    if now > exp.saturating_add(policy.leeway) {
        return Err(Error::Expired { exp });
    }
    for name in ["nbf", "iat"] {
        if let Some(at) = time_claim(claims, name)? {
            if at > now.saturating_add(policy.leeway) {
                return Err(Error::NotYetValid { at });
            }
        }
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => policy.audiences.contains(aud),
        Some(Value::Array(auds)) => {
            if auds.iter().any(|a| !a.is_string()) {
                return Err(Error::InvalidClaim {
                    claim: "aud".into(),
                    reason: "must be a string or an array of strings".into(),
                });
            }
            auds.iter()
                .filter_map(Value::as_str)
                .any(|a| policy.audiences.iter().any(|want| want == a))
        }
        None => false,
        Some(_) => {
            return Err(Error::InvalidClaim {
                claim: "aud".into(),
                reason: "must be a string or an array of strings".into(),
            })
        }
    };
    if !audience_ok {
        return Err(Error::WrongAudience {
            expected: policy.audiences.join(", "),
        });
    }
    for (path, want) in &policy.required {
        match path.lookup(claims) {
            None => {
                return Err(Error::InvalidClaim {
                    claim: path.name.clone(),
                    reason: "is required".into(),
                })
            }
            Some(got) if got != want => {
                return Err(Error::InvalidClaim {
                    claim: path.name.clone(),
                    reason: format!("must be {want}"),
                })
            }
            Some(_) => {}
        }
    }
    Ok(exp)
}

/// A NumericDate (seconds, possibly fractional), floored.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Error> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or_else(|| Error::InvalidClaim {
                claim: name.into(),
                reason: "must be a number of seconds".into(),
            }),
        Some(_) => Err(Error::InvalidClaim {
            claim: name.into(),
            reason: "must be a number of seconds".into(),
        }),
    }
}

/// Header values are attacker-chosen: bound what goes into messages and logs.
pub(super) fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> Policy {
        Policy::new(
            "https://i",
            &["a".into(), "b".into()],
            &["RS256".into()],
            std::time::Duration::from_secs(60),
            &BTreeMap::from([("tenant".into(), json!("t1"))]),
        )
        .unwrap()
    }

    fn check(v: Value) -> Result<i64, Error> {
        claims(&policy(), v.as_object().unwrap(), 1000)
    }

    #[test]
    fn honours_the_leeway_on_both_ends() {
        let base = json!({"iss": "https://i", "aud": "a", "tenant": "t1"});
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c[k] = v;
            c
        };
        assert_eq!(check(with("exp", json!(940))).unwrap(), 940);
        assert!(matches!(
            check(with("exp", json!(939))),
            Err(Error::Expired { exp: 939 })
        ));
        let mut nbf = with("exp", json!(2000));
        nbf["nbf"] = json!(1060);
        assert!(check(nbf.clone()).is_ok());
        nbf["nbf"] = json!(1061.5);
        assert!(matches!(check(nbf), Err(Error::NotYetValid { at: 1061 })));
        assert!(matches!(
            check(with("exp", json!("soon"))),
            Err(Error::InvalidClaim { claim, .. }) if claim == "exp"
        ));
        assert!(matches!(
            check(base.clone()),
            Err(Error::InvalidClaim { claim, reason }) if claim == "exp" && reason == "is required"
        ));
    }

    #[test]
    fn needs_one_configured_audience_and_the_required_claims() {
        let c = json!({"iss": "https://i", "exp": 2000, "aud": ["x", "b"], "tenant": "t1"});
        assert!(check(c).is_ok());
        let c = json!({"iss": "https://i", "exp": 2000, "aud": ["x"], "tenant": "t1"});
        assert!(matches!(check(c), Err(Error::WrongAudience { .. })));
        let c = json!({"iss": "https://i", "exp": 2000, "aud": "a", "tenant": "t2"});
        assert!(matches!(check(c), Err(Error::InvalidClaim { claim, .. }) if claim == "tenant"));
    }

    #[test]
    fn shortens_attacker_chosen_strings() {
        assert_eq!(shorten("abc"), "abc");
        assert_eq!(shorten(&"x".repeat(100)).chars().count(), 65);
    }
}
