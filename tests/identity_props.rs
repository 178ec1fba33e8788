//! Properties of token checking against a real issuer (loopback TLS, real RSA, EC and
//! Ed25519 keys): a valid token with any one character changed, removed or added, or with
//! a part taken from another valid token, is refused; and no refusal repeats the token.

mod support;

use jsonwebtoken::Algorithm;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestRunner;
use serde_json::json;
use support::identity::*;
use support::oidc::{TestIssuer, EC_KID, ED_KID, RSA_KID};

/// What a changed character becomes: base64url, the separator, padding, standard
/// base64's two others, and characters no JWT holds.
const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/!~";

/// One change to a valid token.
#[derive(Debug, Clone)]
enum Change {
    /// The character at this position (modulo the length) becomes another.
    Replace(usize, u8),
    Remove(usize),
    /// A character added before this position (modulo the length + 1).
    Insert(usize, u8),
    /// The header, payload or signature (`part` modulo 3) taken from another token.
    Splice {
        other: usize,
        part: usize,
    },
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (any::<usize>(), select(CHARS)).prop_map(|(at, c)| Change::Replace(at, c)),
        any::<usize>().prop_map(Change::Remove),
        (any::<usize>(), select(CHARS)).prop_map(|(at, c)| Change::Insert(at, c)),
        (1..ALGORITHMS.len(), any::<usize>())
            .prop_map(|(other, part)| Change::Splice { other, part }),
    ]
}

/// `token` changed; never `token` itself.
fn changed(tokens: &[String], which: usize, change: &Change) -> String {
    let token = &tokens[which];
    let mut bytes = token.as_bytes().to_vec();
    match *change {
        Change::Replace(at, c) => {
            let at = at % bytes.len();
            // Another character than the one there.
            bytes[at] = if bytes[at] == c {
                CHARS[(CHARS.iter().position(|&x| x == c).unwrap_or(0) + 1) % CHARS.len()]
            } else {
                c
            };
        }
        Change::Remove(at) => {
            bytes.remove(at % bytes.len());
        }
        Change::Insert(at, c) => bytes.insert(at % (bytes.len() + 1), c),
        Change::Splice { other, part } => {
            let other = &tokens[(which + other) % tokens.len()];
            let mut parts: Vec<&str> = token.split('.').collect();
            let theirs: Vec<&str> = other.split('.').collect();
            parts[part % 3] = theirs[part % 3];
            bytes = parts.join(".").into_bytes();
        }
    }
    let out = String::from_utf8(bytes).expect("ASCII");
    assert_ne!(&out, token, "{change:?}");
    out
}

/// A token of each signing algorithm the issuer has a key for.
const ALGORITHMS: [(Algorithm, &str); 4] = [
    (Algorithm::RS256, RSA_KID),
    (Algorithm::PS256, RSA_KID),
    (Algorithm::ES256, EC_KID),
    (Algorithm::EdDSA, ED_KID),
];

#[test]
fn a_changed_token_is_refused() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (idp, auth) = rt.block_on(async {
        let idp = TestIssuer::start().await;
        let auth = authenticator(&idp, &[]).await;
        (idp, auth)
    });
    // Each its own subject, so no two tokens share a payload.
    let tokens: Vec<String> = ALGORITHMS
        .iter()
        .enumerate()
        .map(|(i, (alg, kid))| {
            let claims = with(idp.claims(AUDIENCE), "sub", json!(format!("user-{i}")));
            idp.mint(*alg, kid, &claims)
        })
        .collect();
    for token in &tokens {
        let subject = rt.block_on(authenticate(&auth, token));
        assert!(subject.is_ok(), "the unchanged token: {subject:?}");
    }

    let mut runner = TestRunner::new(ProptestConfig {
        cases: support::cases::cases(1000),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (0..tokens.len(), change());
    let result = runner.run(&strategy, |(which, change)| {
        let token = changed(&tokens, which, &change);
        let got = rt.block_on(authenticate(&auth, &token));
        prop_assert!(got.is_err(), "{change:?} accepted as {got:?}");
        if let Err(e) = got {
            let message = e.status().message;
            prop_assert!(!message.contains(&token), "{message}");
            prop_assert!(!message.contains(&tokens[which]), "{message}");
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
