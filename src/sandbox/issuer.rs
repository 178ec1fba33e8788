//! The sandbox cluster's service-account token issuer: signs projected-token-shaped
//! JWTs (as the kubelet gets them from the TokenRequest API) and publishes the OIDC
//! discovery document and JWKS that chaperone's `cluster` issuer verifies them with.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use super::util::{new_uid, now_unix};

/// The issuer a kubeadm cluster uses by default (`--service-account-issuer`).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A service-account token to mint.
#[derive(Debug, Clone)]
pub struct TokenSpec<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub service_account_uid: &'a str,
    pub audiences: &'a [String],
    pub ttl_seconds: i64,
    /// The pod the token is bound to: name and uid.
    pub pod: Option<(&'a str, &'a str)>,
}

/// One ES256 signing key, generated when the sandbox starts.
pub struct Issuer {
    key: EncodingKey,
    kid: String,
    jwk: Value,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    pub fn generate() -> Result<Issuer, String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "failed to generate the issuer key".to_owned())?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| "failed to load the issuer key".to_owned())?;
        // An uncompressed P-256 point: 0x04 || X (32 bytes) || Y (32 bytes).
        let point = pair.public_key().as_ref();
        let (x, y) = (&point[1..33], &point[33..65]);
        // Like the API server, name the key by a hash of its public part.
        let kid = URL_SAFE_NO_PAD
            .encode(&ring::digest::digest(&ring::digest::SHA256, point).as_ref()[..16]);
        let jwk = json!({
            "use": "sig", "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        });
        Ok(Issuer {
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            kid,
            jwk,
        })
    }

    /// `GET /openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// `GET /.well-known/openid-configuration`, as the API server publishes it.
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": ISSUER,
            "jwks_uri": format!("{ISSUER}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// A token shaped like a projected service-account token.
    pub fn mint(&self, spec: &TokenSpec<'_>) -> Result<String, String> {
        let now = now_unix();
        let mut k8s = json!({
            "namespace": spec.namespace,
            "serviceaccount": {"name": spec.service_account, "uid": spec.service_account_uid},
        });
        if let Some((name, uid)) = spec.pod {
            k8s["pod"] = json!({"name": name, "uid": uid});
        }
        let claims = json!({
            "aud": spec.audiences,
            "exp": now + spec.ttl_seconds,
            "iat": now,
            "nbf": now,
            "iss": ISSUER,
            "jti": new_uid(),
            "kubernetes.io": k8s,
            "sub": format!("system:serviceaccount:{}:{}", spec.namespace, spec.service_account),
        });
        self.sign(&claims)
    }

    /// Any claims, signed ES256 with this issuer's key (`chaperone local` issues the
    /// MCP server's token with it).
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| format!("failed to sign a token: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn minted_tokens_verify_against_the_published_jwks() {
        let issuer = Issuer::generate().unwrap();
        let audiences = vec!["chaperone".to_owned()];
        let token = issuer
            .mint(&TokenSpec {
                namespace: "default",
                service_account: "mcp",
                service_account_uid: "sa-uid",
                audiences: &audiences,
                ttl_seconds: 600,
                pod: Some(("mcp-0", "pod-uid")),
            })
            .unwrap();
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(issuer.jwks()["keys"][0].clone()).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["chaperone"]);
        validation.set_issuer(&[ISSUER]);
        let data = jsonwebtoken::decode::<Value>(
            &token,
            &DecodingKey::from_jwk(&jwk).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "system:serviceaccount:default:mcp");
        assert_eq!(data.claims["kubernetes.io"]["pod"]["name"], "mcp-0");
        assert_eq!(data.header.kid.as_deref(), Some(issuer.kid.as_str()));
    }
}
