//! Our webhook signatures checked by someone else's code: the npm `standardwebhooks` library
//! (`interop/webhooks/verify.mjs`), run as a child process. The unit tests in
//! `webhooks::signing` check our signer against our verifier and two published vectors; this
//! checks that a consumer using a reference library accepts what we send, rotation included.
//!
//! It needs `cd interop/webhooks && npm ci` (`scripts/test` runs it). Without it the test is
//! built as ignored and says why (see `build.rs`); once installed, a missing `node` fails it.

use serde_json::json;
use time::OffsetDateTime;
use tokenwarden::webhooks::{WebhookSecret, headers, sign};
use tokenwarden_testkit::interop::standardwebhooks_verdicts;

/// One message for `verify.mjs`: the consumer's secret, the headers we would send, the body.
struct Case {
    what: &'static str,
    consumer_secret: WebhookSecret,
    headers: [(&'static str, String); 3],
    body: String,
    expect_ok: bool,
}

/// Runs every case through one `node verify.mjs` and returns its answer for each, in order.
fn npm_verify(cases: &[Case]) -> Vec<String> {
    let messages: Vec<serde_json::Value> = cases
        .iter()
        .map(|case| {
            let headers: serde_json::Map<String, serde_json::Value> = case
                .headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), json!(value)))
                .collect();
            json!({
                "secret": case.consumer_secret.expose_secret(),
                "headers": headers,
                "body": case.body,
            })
        })
        .collect();
    standardwebhooks_verdicts(&messages)
}

#[test]
#[cfg_attr(not(tw_webhooks), ignore = "needs npm ci in interop/webhooks")]
fn the_npm_reference_library_verifies_our_signatures() {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let (one, old, new) = (
        WebhookSecret::generate(),
        WebhookSecret::generate(),
        WebhookSecret::generate(),
    );
    let json_body = json!({
        "id": "evt_01",
        "type": "connection.needs_reconnect",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"user_id": "u1", "provider": "tiktok", "account_id": "a1",
                 "status": "needs_reconnect", "version": 7},
    })
    .to_string();
    let unicode_body = json!({
        "id": "evt_02",
        "type": "connection.created",
        "data": {"user_id": "Zoë 🦀 北京", "provider": "reddit", "account_id": "ü\u{200d}"},
    })
    .to_string();
    // Pretty-printed: newlines and indentation are part of the signed bytes.
    let multiline_body = "{\n  \"type\": \"webhook.test\",\n  \"data\": {}\n}\n".to_owned();

    let signed = |secrets: &[WebhookSecret], id: &str, body: &str| {
        headers(id, now, &sign(secrets, id, now, body.as_bytes()))
    };
    let rotation = signed(&[old.clone(), new.clone()], "evt_03", &json_body);
    let tampered_body = json_body.replace("needs_reconnect", "active");

    let cases = [
        Case {
            what: "one secret",
            consumer_secret: one.clone(),
            headers: signed(std::slice::from_ref(&one), "evt_01", &json_body),
            body: json_body.clone(),
            expect_ok: true,
        },
        Case {
            what: "rotation: consumer still on the old secret",
            consumer_secret: old.clone(),
            headers: rotation.clone(),
            body: json_body.clone(),
            expect_ok: true,
        },
        Case {
            what: "rotation: consumer already on the new secret",
            consumer_secret: new.clone(),
            headers: rotation.clone(),
            body: json_body.clone(),
            expect_ok: true,
        },
        Case {
            what: "unicode body",
            consumer_secret: one.clone(),
            headers: signed(std::slice::from_ref(&one), "evt_02", &unicode_body),
            body: unicode_body.clone(),
            expect_ok: true,
        },
        Case {
            what: "multi-line body",
            consumer_secret: one.clone(),
            headers: signed(std::slice::from_ref(&one), "evt_04", &multiline_body),
            body: multiline_body,
            expect_ok: true,
        },
        Case {
            what: "tampered body",
            consumer_secret: one.clone(),
            headers: signed(std::slice::from_ref(&one), "evt_01", &json_body),
            body: tampered_body.clone(),
            expect_ok: false,
        },
        Case {
            what: "rotation, tampered body",
            consumer_secret: new.clone(),
            headers: rotation,
            body: tampered_body,
            expect_ok: false,
        },
        Case {
            what: "a secret the message was not signed with",
            consumer_secret: WebhookSecret::generate(),
            headers: signed(std::slice::from_ref(&one), "evt_01", &json_body),
            body: json_body,
            expect_ok: false,
        },
    ];

    let answers = npm_verify(&cases);
    assert_eq!(
        answers.len(),
        cases.len(),
        "one answer per case: {answers:?}"
    );
    for (case, answer) in cases.iter().zip(&answers) {
        if case.expect_ok {
            assert_eq!(
                answer, "ok",
                "{}: npm standardwebhooks said {answer}",
                case.what
            );
        } else {
            assert!(
                answer.starts_with("fail: "),
                "{}: must be rejected, npm standardwebhooks said {answer}",
                case.what
            );
        }
    }
}
