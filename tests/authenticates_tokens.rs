//! The identity module against a real issuer: a loopback TLS IdP with real keys and
//! signatures. Every refusal is checked for its exact variant and 401 message.

mod support;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use chaperone::identity::{Authenticator, Error, Subject};
use futures_util::future::join_all;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::identity::*;
use support::oidc::{self, KeyType, Outage, TestIssuer, EC_KID, ED_KID, RSA_KID};

#[tokio::test]
async fn accepts_an_rs256_token_and_prefixes_sub_with_the_issuer() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let token = idp.mint(Algorithm::RS256, RSA_KID, &idp.claims(AUDIENCE));
    let subject = authenticate(&auth, &token).await.expect("valid token");
    assert_eq!(subject, oidc_subject(&idp, &format!("{}#alice", idp.url())));
    assert_eq!(auth.not_ready(), None);
}

#[tokio::test]
async fn accepts_a_ps256_token() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let token = idp.mint(Algorithm::PS256, RSA_KID, &idp.claims(AUDIENCE));
    assert!(authenticate(&auth, &token).await.is_ok());
}

#[tokio::test]
async fn accepts_an_es256_token() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let token = idp.mint(Algorithm::ES256, EC_KID, &idp.claims(AUDIENCE));
    assert!(authenticate(&auth, &token).await.is_ok());
}

#[tokio::test]
async fn accepts_an_eddsa_token() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let token = idp.mint(Algorithm::EdDSA, ED_KID, &idp.claims(AUDIENCE));
    assert!(authenticate(&auth, &token).await.is_ok());
}

#[tokio::test]
async fn accepts_the_lowercase_bearer_scheme_of_the_python_client() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let token = idp.mint(Algorithm::ES256, EC_KID, &idp.claims(AUDIENCE));
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("bearer {token}").parse().expect("header"),
    );
    assert!(auth.authenticate(&headers, false).await.is_ok());
}

#[tokio::test]
async fn tries_every_key_of_the_algorithm_when_the_token_names_no_key() {
    let idp = TestIssuer::start().await;
    idp.add_key(KeyType::EcP256, "ec-2");
    let auth = authenticator(&idp, &[]).await;
    let token = idp.mint_with_header(
        &Header::new(Algorithm::ES256),
        "ec-2",
        &idp.claims(AUDIENCE),
    );
    assert!(authenticate(&auth, &token).await.is_ok());
    assert!(auth.stats().signature_checks >= 1);
}

#[tokio::test]
async fn verifies_with_keys_from_a_jwks_url_without_discovery() {
    let idp = TestIssuer::start().await;
    let yaml = format!(
        "- issuer: {}\n  audiences: [chaperone]\n  jwksUrl: {}\n  caFile: {}\n",
        idp.url(),
        idp.jwks_url(),
        idp.ca_file().display()
    );
    let auth = Authenticator::new(&identity(&yaml), None).expect("authenticator");
    ready(&auth).await;
    let token = idp.mint(Algorithm::RS256, RSA_KID, &idp.claims(AUDIENCE));
    assert!(authenticate(&auth, &token).await.is_ok());
    assert_eq!(idp.discovery_fetches(), 0);
}

#[tokio::test]
async fn picks_up_a_rotated_key_without_restart() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let fetches = idp.jwks_fetches();
    idp.add_key(KeyType::Rsa, "rsa-2");
    let token = idp.mint(Algorithm::RS256, "rsa-2", &idp.claims(AUDIENCE));
    assert!(authenticate(&auth, &token).await.is_ok());
    assert_eq!(
        idp.jwks_fetches(),
        fetches + 1,
        "one refetch for the new kid"
    );
}

#[tokio::test]
async fn reloads_a_jwks_file_when_it_changes() {
    let idp = TestIssuer::start().await;
    let file = idp.dir().join("jwks.json");
    std::fs::write(&file, idp.jwks()).expect("write JWKS");
    let yaml = format!(
        "- issuer: {}\n  audiences: [chaperone]\n  jwksFile: {}\n",
        idp.url(),
        file.display()
    );
    let auth = Authenticator::new(&identity(&yaml), None).expect("authenticator");
    ready(&auth).await;
    idp.add_key(KeyType::EcP256, "ec-2");
    std::fs::write(&file, idp.jwks()).expect("rewrite JWKS");
    let token = idp.mint(Algorithm::ES256, "ec-2", &idp.claims(AUDIENCE));
    assert!(authenticate(&auth, &token).await.is_ok());
}

#[tokio::test]
async fn keeps_verifying_with_the_last_good_keys_while_the_idp_is_down() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    for outage in [Outage::Closed, Outage::Unavailable] {
        idp.set_outage(Some(outage));
        let claims = with(idp.claims(AUDIENCE), "jti", json!(format!("{outage:?}")));
        let token = idp.mint(Algorithm::RS256, RSA_KID, &claims);
        assert!(authenticate(&auth, &token).await.is_ok(), "{outage:?}");
        assert_eq!(auth.not_ready(), None);
    }
    // A key added while the IdP is down cannot be fetched; the known ones still work.
    idp.add_key(KeyType::Rsa, "rsa-new");
    let token = idp.mint(Algorithm::RS256, "rsa-new", &idp.claims(AUDIENCE));
    let err = authenticate(&auth, &token).await.expect_err("unknown kid");
    assert!(matches!(err, Error::UnknownKeyId { .. }), "{err:?}");
}

#[tokio::test]
async fn is_not_ready_until_the_first_key_fetch_succeeds() {
    let idp = TestIssuer::start().await;
    idp.set_outage(Some(Outage::Unavailable));
    let auth = Authenticator::new(
        &identity(&idp.issuer_yaml(&["minRefreshInterval: 100ms"])),
        None,
    )
    .expect("authenticator");
    assert_eq!(
        auth.not_ready(),
        Some(format!("no keys yet for issuer {}", idp.url()))
    );
    let token = idp.mint(Algorithm::RS256, RSA_KID, &idp.claims(AUDIENCE));
    let err = authenticate(&auth, &token).await.expect_err("no keys yet");
    assert!(matches!(err, Error::KeysUnavailable { .. }), "{err:?}");
    let status = err.status();
    assert_eq!((status.code, status.reason), (503, "ServiceUnavailable"));
    assert_eq!(
        status.message,
        format!("no signing keys yet for issuer {}", idp.url())
    );

    idp.set_outage(None);
    ready(&auth).await;
    assert_eq!(auth.not_ready(), None);
    assert!(authenticate(&auth, &token).await.is_ok());
}

#[tokio::test]
async fn refuses_an_expired_token() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let claims = with(idp.claims(AUDIENCE), "exp", json!(1_000_000_000));
    let claims = with(
        with(claims, "iat", json!(999_999_000)),
        "nbf",
        json!(999_999_000),
    );
    let token = idp.mint(Algorithm::RS256, RSA_KID, &claims);
    let err = authenticate(&auth, &token).await.expect_err("expired");
    assert!(
        matches!(err, Error::Expired { exp: 1_000_000_000 }),
        "{err:?}"
    );
    assert_unauthorized(&err, &token, "token expired at 2001-09-09T01:46:40Z");
}

#[tokio::test]
async fn refuses_a_token_that_is_not_yet_valid() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let claims = with(idp.claims(AUDIENCE), "nbf", json!(4_102_444_800_i64));
    let claims = with(claims, "exp", json!(4_102_448_400_i64));
    let token = idp.mint(Algorithm::ES256, EC_KID, &claims);
    let err = authenticate(&auth, &token)
        .await
        .expect_err("not yet valid");
    assert!(matches!(err, Error::NotYetValid { .. }), "{err:?}");
    assert_unauthorized(
        &err,
        &token,
        "token is not valid before 2100-01-01T00:00:00Z",
    );
}

#[tokio::test]
async fn refuses_a_token_for_another_audience() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let token = idp.mint(Algorithm::RS256, RSA_KID, &idp.claims("kubernetes"));
    let err = authenticate(&auth, &token)
        .await
        .expect_err("wrong audience");
    assert!(matches!(err, Error::WrongAudience { .. }), "{err:?}");
    assert_unauthorized(&err, &token, "token audience does not include chaperone");
}

#[tokio::test]
async fn refuses_a_token_from_an_unknown_issuer() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let claims = with(idp.claims(AUDIENCE), "iss", json!("https://evil.example"));
    let token = idp.mint(Algorithm::RS256, RSA_KID, &claims);
    let err = authenticate(&auth, &token)
        .await
        .expect_err("unknown issuer");
    assert!(matches!(err, Error::UnknownIssuer(_)), "{err:?}");
    assert_unauthorized(
        &err,
        &token,
        "token issuer \"https://evil.example\" is not trusted",
    );
}

#[tokio::test]
async fn refuses_an_unsigned_alg_none_token() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let token = oidc::raw_token(
        &json!({"alg": "none", "kid": RSA_KID}),
        &idp.claims(AUDIENCE),
        b"",
    );
    let err = authenticate(&auth, &token).await.expect_err("alg none");
    assert!(matches!(err, Error::DisallowedAlgorithm { .. }), "{err:?}");
    let message = format!(
        "token algorithm none is not accepted for issuer {}",
        idp.url()
    );
    assert_unauthorized(&err, &token, &message);
}

#[tokio::test]
async fn refuses_hs256_signed_with_the_rsa_public_key() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(RSA_KID.to_owned());
    let secret = EncodingKey::from_secret(&idp.public_key(RSA_KID));
    let token = jsonwebtoken::encode(&header, &idp.claims(AUDIENCE), &secret).expect("sign");
    let err = authenticate(&auth, &token)
        .await
        .expect_err("algorithm confusion");
    assert!(matches!(err, Error::DisallowedAlgorithm { .. }), "{err:?}");
    let message = format!(
        "token algorithm HS256 is not accepted for issuer {}",
        idp.url()
    );
    assert_unauthorized(&err, &token, &message);
    assert_eq!(auth.stats().signature_checks, 0);
}

#[tokio::test]
async fn refuses_an_algorithm_that_does_not_fit_the_named_key() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(EC_KID.to_owned());
    let token = idp.mint_with_header(&header, RSA_KID, &idp.claims(AUDIENCE));
    let err = authenticate(&auth, &token).await.expect_err("key mismatch");
    assert!(matches!(err, Error::DisallowedAlgorithm { .. }), "{err:?}");
    let message =
        "token algorithm RS256 does not match key \"ec-1\", an EC P-256 key pinned to ES256";
    assert_unauthorized(&err, &token, message);
}

#[tokio::test]
async fn refuses_a_tampered_payload() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let token = idp.mint(Algorithm::RS256, RSA_KID, &idp.claims(AUDIENCE));
    let forged = with(idp.claims(AUDIENCE), "sub", json!("mallory"));
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = oidc::raw_token(&json!({}), &forged, b"")
        .split('.')
        .nth(1)
        .expect("payload")
        .to_owned();
    let tampered = parts.join(".");
    let err = authenticate(&auth, &tampered).await.expect_err("tampered");
    assert!(matches!(err, Error::BadSignature), "{err:?}");
    assert_unauthorized(&err, &tampered, "token signature is invalid");
}

#[tokio::test]
async fn refuses_a_malformed_token() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let err = authenticate(&auth, "not-a-jwt")
        .await
        .expect_err("malformed");
    assert!(matches!(err, Error::Malformed(_)), "{err:?}");
    assert_unauthorized(
        &err,
        "not-a-jwt",
        "malformed token: not a JWT: expected three dot-separated parts",
    );
}

#[tokio::test]
async fn bounds_key_fetches_under_a_flood_of_unknown_key_ids() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let tokens: Vec<String> = (0..200)
        .map(|i| {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(format!("bogus-{i}"));
            idp.mint_with_header(&header, EC_KID, &idp.claims(AUDIENCE))
        })
        .collect();
    let results = join_all(tokens.iter().map(|t| authenticate(&auth, t))).await;
    for (err, token) in results.into_iter().zip(&tokens) {
        let err = err.expect_err("bogus kid");
        assert!(matches!(err, Error::UnknownKeyId { .. }), "{err:?}");
        assert!(err.status().message.starts_with("token key id \"bogus-"));
        assert!(!err.status().message.contains(token.as_str()));
    }
    assert!(
        idp.jwks_fetches() <= 3,
        "{} JWKS fetches",
        idp.jwks_fetches()
    );
}

#[tokio::test]
async fn maps_email_nested_groups_uid_and_extra_claims() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(
        &idp,
        &[
            "usernameClaim: email",
            "groupsClaim: realm_access.roles",
            "groupsPrefix: 'oidc:'",
            "uidClaim: sub",
            "extra: {example.com/tenant: tenant}",
            "requiredClaims: {tenant: acme}",
        ],
    )
    .await;
    let claims = idp.claims(AUDIENCE);
    let claims = with(claims, "email", json!("alice@example.com"));
    let claims = with(claims, "email_verified", json!(true));
    let claims = with(claims, "realm_access", json!({"roles": ["admin", "dev"]}));
    let claims = with(claims, "tenant", json!("acme"));
    let token = idp.mint(Algorithm::ES256, EC_KID, &claims);
    let subject = authenticate(&auth, &token).await.expect("valid token");
    assert_eq!(
        subject,
        Subject {
            user: "alice@example.com".into(),
            groups: vec![
                "oidc:admin".into(),
                "oidc:dev".into(),
                "system:authenticated".into()
            ],
            uid: "alice".into(),
            extra: oidc::extra(&[("example.com/tenant", "acme")]),
            issuer: idp.url().into(),
            ..Subject::default()
        }
    );

    let token = idp.mint(
        Algorithm::ES256,
        EC_KID,
        &with(claims, "tenant", json!("other")),
    );
    let err = authenticate(&auth, &token)
        .await
        .expect_err("required claim");
    assert!(matches!(err, Error::InvalidClaim { .. }), "{err:?}");
    assert_unauthorized(&err, &token, "token claim tenant must be \"acme\"");
}

/// A token whose groups are a distributed claim (Azure AD's form for a user in more than
/// 200 groups) holds no groups of its own: read as having none, its user would pass
/// every rule that denies or holds a group. The API server fetches such claims and fails
/// the token when it cannot; chaperone does not fetch them, so it refuses the token.
#[tokio::test]
async fn refuses_groups_in_a_distributed_claim() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &["groupsClaim: groups"]).await;
    let distributed = with(
        with(
            idp.claims(AUDIENCE),
            "_claim_names",
            json!({"groups": "src1"}),
        ),
        "_claim_sources",
        json!({"src1": {"endpoint": "https://graph.example.com/v1.0/users/alice/getMemberObjects"}}),
    );
    let token = idp.mint(Algorithm::ES256, EC_KID, &distributed);
    let err = authenticate(&auth, &token)
        .await
        .expect_err("distributed groups");
    assert!(matches!(err, Error::InvalidClaim { .. }), "{err:?}");
    assert_unauthorized(
        &err,
        &token,
        "token claim groups is a distributed claim (named in _claim_names, to be fetched \
         from the identity provider), which chaperone does not fetch: have the identity \
         provider put the groups in the token",
    );
    // Groups in the token itself are read as they are, whatever `_claim_names` says.
    let token = idp.mint(
        Algorithm::ES256,
        EC_KID,
        &with(distributed.clone(), "groups", json!(["dev"])),
    );
    let subject = authenticate(&auth, &token)
        .await
        .expect("groups in the token");
    assert_eq!(subject.groups, ["dev", "system:authenticated"]);
    // A distributed claim the mapping does not use changes nothing.
    let token = idp.mint(
        Algorithm::ES256,
        EC_KID,
        &with(
            idp.claims(AUDIENCE),
            "_claim_names",
            json!({"roles": "src1"}),
        ),
    );
    assert_eq!(
        authenticate(&auth, &token)
            .await
            .expect("other claim")
            .groups,
        ["system:authenticated"]
    );
    // As the API server, `_claim_names` must name sources, when it is read at all.
    let token = idp.mint(
        Algorithm::ES256,
        EC_KID,
        &with(idp.claims(AUDIENCE), "_claim_names", json!(["groups"])),
    );
    let err = authenticate(&auth, &token).await.expect_err("bad names");
    assert_unauthorized(
        &err,
        &token,
        "token claim _claim_names must be an object naming each distributed claim's source",
    );
}

#[tokio::test]
async fn applies_a_configured_username_prefix_or_none() {
    let idp = TestIssuer::start().await;
    let token = idp.mint(Algorithm::EdDSA, ED_KID, &idp.claims(AUDIENCE));
    let prefixed = authenticator(&idp, &["usernamePrefix: 'idp:'"]).await;
    assert_eq!(
        authenticate(&prefixed, &token).await.expect("ok").user,
        "idp:alice"
    );
    let bare = authenticator(&idp, &["usernamePrefix: '-'"]).await;
    assert_eq!(authenticate(&bare, &token).await.expect("ok").user, "alice");
}

#[tokio::test]
async fn refuses_an_unverified_email_as_username() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &["usernameClaim: email"]).await;
    let claims = with(idp.claims(AUDIENCE), "email", json!("alice@example.com"));
    let token = idp.mint(
        Algorithm::RS256,
        RSA_KID,
        &with(claims, "email_verified", json!(false)),
    );
    let err = authenticate(&auth, &token)
        .await
        .expect_err("unverified email");
    assert!(matches!(err, Error::InvalidClaim { .. }), "{err:?}");
    assert_unauthorized(
        &err,
        &token,
        "token claim email_verified must be true when email is the username",
    );
}

#[tokio::test]
async fn maps_a_projected_service_account_token_like_the_api_server() {
    let idp = TestIssuer::start().await;
    let auth = cluster_authenticator(&idp).await;
    let claims = oidc::service_account_claims(CLUSTER_ISSUER, AUDIENCE, "agents", "mcp");
    let token = idp.mint(Algorithm::RS256, RSA_KID, &claims);
    let subject = authenticate(&auth, &token).await.expect("valid SA token");
    assert_eq!(
        subject,
        Subject {
            user: "system:serviceaccount:agents:mcp".into(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:agents".into(),
                "system:authenticated".into(),
            ],
            uid: "9c8b7a6f-5e4d-3c2b-1a09-f8e7d6c5b4a3".into(),
            extra: oidc::extra(&[
                (
                    "authentication.kubernetes.io/credential-id",
                    "JTI=5b0a5a1e-2f52-4f0c-9e0b-8f3a1c2d4e5f"
                ),
                ("authentication.kubernetes.io/node-name", "node-1"),
                (
                    "authentication.kubernetes.io/node-uid",
                    "7d1b3c55-9a55-4b0e-8a8c-0c2a6f1d9e10"
                ),
                ("authentication.kubernetes.io/pod-name", "agent-7f9c"),
                (
                    "authentication.kubernetes.io/pod-uid",
                    "1f0e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
                ),
            ]),
            issuer: CLUSTER_ISSUER.into(),
            ..Subject::default()
        }
    );
}

#[tokio::test]
async fn refuses_a_service_account_token_whose_sub_names_someone_else() {
    let idp = TestIssuer::start().await;
    let auth = cluster_authenticator(&idp).await;
    let claims = oidc::service_account_claims(CLUSTER_ISSUER, AUDIENCE, "agents", "mcp");
    let claims = with(
        claims,
        "sub",
        json!("system:serviceaccount:kube-system:admin"),
    );
    let token = idp.mint(Algorithm::RS256, RSA_KID, &claims);
    let err = authenticate(&auth, &token).await.expect_err("sub mismatch");
    assert!(matches!(err, Error::InvalidClaim { .. }), "{err:?}");
    assert_unauthorized(
        &err,
        &token,
        "token claim sub must name the service account in kubernetes.io",
    );
}

#[tokio::test]
async fn answers_a_repeated_token_from_the_cache_without_verifying_again() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let token = idp.mint(Algorithm::RS256, RSA_KID, &idp.claims(AUDIENCE));
    let first = authenticate(&auth, &token).await.expect("valid token");
    let checks = auth.stats().signature_checks;
    assert_eq!(checks, 1);
    for _ in 0..5 {
        assert_eq!(authenticate(&auth, &token).await.expect("cached"), first);
    }
    assert_eq!(
        auth.stats().signature_checks,
        checks,
        "no signature check on a hit"
    );
    assert_eq!(auth.stats().cache_hits, 5);
}

#[tokio::test]
async fn refuses_a_cached_token_once_it_expires() {
    let idp = TestIssuer::start().await;
    // A clock the test moves: 2023-11-14T22:13:20Z plus `offset` seconds.
    let offset = Arc::new(AtomicI64::new(0));
    let clock_offset = offset.clone();
    let clock = Arc::new(move || {
        let secs = 1_700_000_000 + clock_offset.load(Ordering::SeqCst);
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    });
    let config = identity(&idp.issuer_yaml(&[]));
    let auth = Authenticator::with_clock(&config, None, clock).expect("authenticator");
    ready(&auth).await;
    let claims = json!({"iss": idp.url(), "sub": "alice", "aud": AUDIENCE,
        "iat": 1_700_000_000, "exp": 1_700_000_120});
    let token = idp.mint(Algorithm::ES256, EC_KID, &claims);
    assert!(authenticate(&auth, &token).await.is_ok());
    offset.store(180, Ordering::SeqCst); // exp + 60s leeway is still accepted
    assert!(authenticate(&auth, &token).await.is_ok());
    assert_eq!(auth.stats().cache_hits, 1);
    offset.store(181, Ordering::SeqCst);
    let err = authenticate(&auth, &token)
        .await
        .expect_err("expired in cache");
    assert!(
        matches!(err, Error::Expired { exp: 1_700_000_120 }),
        "{err:?}"
    );
    assert_unauthorized(&err, &token, "token expired at 2023-11-14T22:15:20Z");
    assert_eq!(auth.stats().signature_checks, 1, "refused from the cache");
}

#[tokio::test]
async fn forgets_cached_tokens_when_their_key_is_removed() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let token = idp.mint(Algorithm::RS256, RSA_KID, &idp.claims(AUDIENCE));
    assert!(authenticate(&auth, &token).await.is_ok());
    idp.remove_key(RSA_KID);
    // A new kid makes the authenticator refetch, and it sees rsa-1 is gone.
    idp.add_key(KeyType::EcP256, "ec-2");
    let rotated = idp.mint(Algorithm::ES256, "ec-2", &idp.claims(AUDIENCE));
    assert!(authenticate(&auth, &rotated).await.is_ok());
    let err = authenticate(&auth, &token).await.expect_err("key removed");
    assert!(matches!(err, Error::UnknownKeyId { .. }), "{err:?}");
    let message = format!(
        "token key id \"rsa-1\" is not among the signing keys of issuer {}",
        idp.url()
    );
    assert_unauthorized(&err, &token, &message);
}

#[tokio::test]
async fn asks_for_a_bearer_token_when_none_is_sent() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let err = auth
        .authenticate(&HeaderMap::new(), false)
        .await
        .expect_err("no token");
    assert!(matches!(err, Error::NoToken), "{err:?}");
    assert_unauthorized(
        &err,
        "",
        "no bearer token: send Authorization: Bearer <token>",
    );
    let mut basic = HeaderMap::new();
    basic.insert(
        http::header::AUTHORIZATION,
        "Basic YTpi".parse().expect("header"),
    );
    let err = auth
        .authenticate(&basic, false)
        .await
        .expect_err("basic auth");
    assert!(matches!(err, Error::NoToken), "{err:?}");
}

#[tokio::test]
async fn explains_that_a_client_certificate_is_not_a_credential_here() {
    let idp = TestIssuer::start().await;
    let auth = authenticator(&idp, &[]).await;
    let err = auth
        .authenticate(&HeaderMap::new(), true)
        .await
        .expect_err("cert only");
    assert!(
        matches!(err, Error::ClientCertificateInsteadOfToken),
        "{err:?}"
    );
    assert_unauthorized(
        &err,
        "",
        "a TLS client certificate was presented instead of a bearer token: chaperone \
         authenticates bearer tokens only; send Authorization: Bearer <token>",
    );
}

#[tokio::test]
async fn refuses_to_start_a_cluster_issuer_without_the_cluster_jwks() {
    let yaml = format!("- issuer: {CLUSTER_ISSUER}\n  audiences: [chaperone]\n  cluster: true\n");
    let err = Authenticator::new(&identity(&yaml), None)
        .err()
        .expect("config error");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert_eq!(err.status().code, 500);
}

#[test]
fn an_authenticator_can_be_shared_across_tasks() {
    fn shareable<T: Clone + Send + Sync + 'static>(_: &T) {}
    fn sendable<F: std::future::Future + Send>(_: F) {}
    let _ = |auth: Authenticator, headers: HeaderMap| {
        shareable(&auth);
        sendable(async move { auth.authenticate(&headers, false).await });
    };
}

/// The cluster's JWKS, served at once the first time and slowly with a new key after.
struct RotatingSlowly {
    fetches: std::sync::atomic::AtomicUsize,
    before: bytes::Bytes,
    after: bytes::Bytes,
}

impl chaperone::identity::ClusterJwks for RotatingSlowly {
    fn fetch(
        &self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<bytes::Bytes, String>> + Send + '_>,
    > {
        Box::pin(async move {
            if self.fetches.fetch_add(1, Ordering::SeqCst) == 0 {
                return Ok(self.before.clone());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(self.after.clone())
        })
    }
}

/// A caller that hangs up while its unknown key id has the keys fetched does not cancel
/// the fetch: a token signed with the key the issuer has just published is accepted,
/// not refused until the next scheduled refresh (minutes away).
#[tokio::test]
async fn a_caller_hanging_up_does_not_cancel_the_key_fetch_it_caused() {
    let idp = TestIssuer::start().await;
    let before = idp.jwks();
    idp.add_key(KeyType::EcP256, "ec-2");
    let jwks = Arc::new(RotatingSlowly {
        fetches: Default::default(),
        before,
        after: idp.jwks(),
    });
    let yaml = format!("- issuer: {CLUSTER_ISSUER}\n  audiences: [chaperone]\n  cluster: true\n");
    let auth = Authenticator::new(&identity(&yaml), Some(jwks.clone())).expect("authenticator");
    ready(&auth).await;
    let claims = oidc::service_account_claims(CLUSTER_ISSUER, AUDIENCE, "agents", "mcp");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("made-up".to_owned());
    let bogus = idp.mint_with_header(&header, RSA_KID, &claims);
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        auth.authenticate(&bearer(&bogus), false),
    )
    .await;
    assert!(gave_up.is_err(), "the fetch should still be running");
    // The fetch goes on without its caller; then the new key verifies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);
    let token = idp.mint(Algorithm::ES256, "ec-2", &claims);
    authenticate(&auth, &token)
        .await
        .expect("a token signed with the new key");
}
