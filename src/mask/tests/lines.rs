//! Pod logs.

use super::*;

const TEXT: &str = "text/plain";

fn log_target() -> Target<'static> {
    Target {
        subresource: "log",
        name: "web-1",
        ..target("pods")
    }
}

async fn mask_log(m: &Masker, input: &str) -> (String, u64) {
    let (out, n) = run(m, &log_target(), TEXT, input.as_bytes()).await.unwrap();
    (String::from_utf8(out).unwrap(), n)
}

#[tokio::test]
async fn builtin_detectors_mask_log_lines() {
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let input = format!(
        "starting\nlogin token {jwt} ok\naws AKIAIOSFODNN7EXAMPLE\n\
         gh ghp_abcdefghijklmnopqrstuvwxyz0123456789 done\nslack xoxb-123456789012-abcdefABCDEF\n\
         db password=hunter2 port=5432\r\nAuthorization: Bearer abcdef.123456-xyz\nplain last line"
    );
    let (out, n) = mask_log(&defaults(), &input).await;
    let m = MARKER;
    assert_eq!(
        out,
        format!(
            "starting\nlogin token {m} ok\naws {m}\ngh {m} done\nslack {m}\n\
             db password={m} port=5432\r\nAuthorization: Bearer {m}\nplain last line"
        )
    );
    assert_eq!(n, 6);
}

#[tokio::test]
async fn partial_last_line_is_masked() {
    let (out, n) = mask_log(&defaults(), "a\nsecret: xyz").await;
    assert_eq!(out, format!("a\nsecret: {MARKER}"));
    assert_eq!(n, 1);
}

#[tokio::test]
async fn pem_block_spanning_lines() {
    let input =
        "boot\n2024-01-01T00:00:00Z -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc/def+\n\
                 -----END RSA PRIVATE KEY----- trailing\nafter\n";
    let (out, n) = mask_log(&defaults(), input).await;
    let m = MARKER;
    assert_eq!(
        out,
        format!("boot\n2024-01-01T00:00:00Z {m}\n{m}\n{m}\n{m} trailing\nafter\n")
    );
    assert_eq!(n, 1);
    // On one line (a JSON log with `\n` escapes) the block is one match.
    let one = "{\"msg\":\"-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----\"}\n";
    let (out, _) = mask_log(&defaults(), one).await;
    assert_eq!(out, format!("{{\"msg\":\"{m}\"}}\n"));
}

/// A read that starts inside a key (`tailLines`, `sinceTime`, a rotated log file) has
/// no header: the base64 lines it starts with, and the `END` after them, are masked.
#[tokio::test]
async fn pem_block_whose_start_was_not_read() {
    let m = MARKER;
    let body = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw";
    let input = format!(
        "{body}\nabc/def+ghi=jkl0mno==  \nZg==\n-----END RSA PRIVATE KEY-----\nafter {body}\n"
    );
    let (out, n) = mask_log(&defaults(), &input).await;
    assert_eq!(out, format!("{m}\n{m}\n{m}\n{m}\nafter {body}\n"));
    assert_eq!(n, 1);
    // With `timestamps=true` each line starts with its time; base64 later in the log is
    // not a key, and words are not base64 lines.
    let input = format!(
        "2024-01-01T00:00:00.123456789Z {body}\n2024-01-01T00:00:00.2Z -----END PRIVATE KEY-----\n{body}\n"
    );
    let (out, n) = mask_log(&defaults(), &input).await;
    assert_eq!(out, format!("{m}\n{m}\n{body}\n"));
    assert_eq!(n, 1);
    for plain in [
        "starting\n",
        "Initialised the cache: 12 entries\n",
        "================================\nbanner\n",
        "ApplicationStartedSuccessfully\n",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n",
    ] {
        assert_eq!(mask_log(&defaults(), plain).await, (plain.to_owned(), 0));
    }
}

#[tokio::test]
async fn user_patterns_for_matching_pods_only() {
    let m = Masker::compile(&[
        Rule {
            resources: vec!["pods".into()],
            names: vec!["web-*".into()],
            patterns: vec![r"pin (?P<secret>\d{4})".into(), r"sessionid=\w+".into()],
            ..Rule::default()
        },
        Rule {
            resources: vec!["pods".into()],
            names: vec!["db-*".into()],
            patterns: vec!["visible".into()],
            ..Rule::default()
        },
    ])
    .unwrap();
    let (out, n) = mask_log(&m, "pin 1234 ok\ncookie sessionid=abc123 visible\n").await;
    assert_eq!(out, format!("pin {MARKER} ok\ncookie {MARKER} visible\n"));
    assert_eq!(n, 2);
}

#[tokio::test]
async fn follow_stream_emits_each_complete_line() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|item| (item, rx))
    });
    let plan = defaults().plan(&log_target(), &headers(TEXT));
    let count = Arc::new(AtomicU64::new(0));
    let mut body = apply(StreamBody::new(stream).boxed(), plan, count.clone());
    tx.send(Ok(Frame::data(Bytes::from_static(b"one\ntoken=ab"))))
        .await
        .unwrap();
    let f = body.frame().await.unwrap().unwrap();
    assert_eq!(f.into_data().unwrap(), "one\n");
    tx.send(Ok(Frame::data(Bytes::from_static(b"cd\n"))))
        .await
        .unwrap();
    let f = body.frame().await.unwrap().unwrap();
    assert_eq!(f.into_data().unwrap(), format!("token={MARKER}\n"));
    drop(tx);
    assert!(body.frame().await.is_none());
    assert_eq!(count.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn long_lines_are_cut_and_masked() {
    let ghp = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
    let filler = "x".repeat(MAX_LINE - 100);
    let input = format!("{filler} {ghp} {filler} {ghp}\n");
    let (out, n) = mask_log(&defaults(), &input).await;
    assert!(!out.contains(ghp));
    assert_eq!(n, 2);
    assert_eq!(out, format!("{filler} {MARKER} {filler} {MARKER}\n"));
}
