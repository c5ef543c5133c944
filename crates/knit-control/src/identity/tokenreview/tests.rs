//! TokenReview answers recorded from an API server (`tests/k8s/tokenreview-*.json`), judged
//! purely, then through a real socket with a fake API server and a real `kube::Client`.

use super::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex},
};

const BOOKS: &str = "books.demo.serviceaccount.identity.knit.cluster.local";

fn naming() -> Naming {
    Naming { control_plane_ns: "knit".into(), trust_domain: "cluster.local".into() }
}

fn recorded(name: &str) -> String {
    let path = format!("{}/tests/k8s/tokenreview-{name}.json", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn answer(name: &str) -> TokenReview {
    serde_json::from_str(&recorded(name)).unwrap()
}

/// The reason of a rejection, or the identity.
fn verdict(review: &TokenReview, with_audience: bool) -> Result<String, &'static str> {
    match judge(review, with_audience, &naming()) {
        Verdict::Identity(id) => Ok(id),
        Verdict::Rejected(r) => Err(r.reason),
        Verdict::RetryWithoutAudiences => Err("retry"),
    }
}

fn with_username(name: &str) -> TokenReview {
    let mut r = answer("authenticated");
    r.status.as_mut().unwrap().user.as_mut().unwrap().username = Some(name.into());
    r
}

#[test]
fn the_request_asks_for_the_identity_audience() {
    let body = serde_json::to_value(review("tok", true)).unwrap();
    assert_eq!(body["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(body["spec"], serde_json::json!({"token": "tok", "audiences": ["identity.l5d.io"]}));
    assert!(serde_json::to_value(review("tok", false)).unwrap()["spec"].get("audiences").is_none());
}

#[test]
fn an_authenticated_service_account_gets_its_identity() {
    assert_eq!(verdict(&answer("authenticated"), true), Ok(BOOKS.to_string()));
}

#[test]
fn refusals_say_why() {
    assert_eq!(verdict(&answer("unauthenticated"), true), Err("token_unauthenticated"));
    assert_eq!(verdict(&answer("audiences"), true), Err("retry"));
    assert_eq!(verdict(&answer("audiences"), false), Err("token_unauthenticated"), "asked once more, it is a plain refusal");
    let mut other_audience = answer("authenticated");
    other_audience.status.as_mut().unwrap().audiences = Some(vec!["https://kubernetes.default.svc.cluster.local".into()]);
    assert_eq!(verdict(&other_audience, true), Err("token_invalid"));
    for user in ["kubernetes-admin", "system:node:kind-worker", "system:serviceaccount:demo", "system:serviceaccount:demo:books:x"] {
        assert_eq!(verdict(&with_username(user), true), Err("token_invalid"), "{user}");
    }
    for user in ["system:serviceaccount:Demo:books", "system:serviceaccount:demo:books_v2", "system:serviceaccount:demo:-books", "system:serviceaccount::books"]
    {
        assert_eq!(verdict(&with_username(user), true), Err("token_invalid"), "{user}");
    }
}

#[test]
fn an_api_error_about_audiences_asks_again_and_others_fail_the_review() {
    let status = |msg: &str| kube::Error::Api(Box::new(kube::core::Status::failure(msg, "BadRequest").with_code(400)));
    let audiences = status("token audiences [\"api\"] is invalid for the target audiences [\"identity.l5d.io\"]");
    assert!(matches!(api_failure(&audiences, true), Verdict::RetryWithoutAudiences));
    assert!(matches!(api_failure(&audiences, false), Verdict::Rejected(Rejection { reason: "tokenreview_failed", .. })));
    assert!(matches!(api_failure(&status("etcdserver: request timed out"), true), Verdict::Rejected(Rejection { reason: "tokenreview_failed", .. })));
}

/// What the fake API server saw: method, path and JSON body of each request.
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A fake API server on 127.0.0.1:0 answering each request with the next `(status, body)`.
async fn api_server(answers: Vec<(u16, String)>) -> (Client, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Default::default();
    let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    let recorded = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (seen, answers) = (recorded.clone(), answers.clone());
            let svc = service_fn(move |req: Request<Incoming>| {
                let (seen, answers) = (seen.clone(), answers.clone());
                async move {
                    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    seen.lock().unwrap().push((method, path, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                    let (status, json) = answers.lock().unwrap().pop_front().unwrap_or((500, "{}".into()));
                    let rsp = Response::builder().status(status).header("content-type", "application/json").body(Full::new(Bytes::from(json)));
                    Ok::<_, Infallible>(rsp.unwrap())
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(tcp), svc));
        }
    });
    let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    (client, seen)
}

#[tokio::test]
async fn a_review_through_the_api() {
    let (client, seen) = api_server(vec![(201, recorded("authenticated"))]).await;
    let tokens = KubernetesTokens::new(client, naming());
    assert_eq!(tokens.validate(b"hdr.the-token.sig").await.unwrap(), BOOKS);
    let seen = seen.lock().unwrap();
    let (method, path, body) = &seen[0];
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/apis/authentication.k8s.io/v1/tokenreviews"));
    assert_eq!(body["spec"], serde_json::json!({"token": "hdr.the-token.sig", "audiences": ["identity.l5d.io"]}));
}

#[tokio::test]
async fn a_token_audiences_error_is_asked_again_without_audiences() {
    let mut legacy = answer("authenticated");
    legacy.status.as_mut().unwrap().audiences = None;
    let answers = vec![(201, recorded("audiences")), (201, serde_json::to_string(&legacy).unwrap())];
    let (client, seen) = api_server(answers).await;
    let tokens = KubernetesTokens::new(client, naming());
    assert_eq!(tokens.validate(b"hdr.legacy-token.sig").await.unwrap(), BOOKS);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "exactly one retry");
    assert_eq!(seen[1].2["spec"], serde_json::json!({"token": "hdr.legacy-token.sig"}));
}

#[tokio::test]
async fn an_api_error_fails_the_review_with_its_status() {
    let (client, _) = api_server(vec![(403, recorded("forbidden"))]).await;
    let err = KubernetesTokens::new(client, naming()).validate(b"h.t.s").await.unwrap_err();
    assert_eq!(err.reason, "tokenreview_failed");
    assert!(err.message.contains("403 Forbidden"), "{}", err.message);
}

#[test]
fn only_tokens_shaped_like_a_jwt_are_sent_to_the_api_server() {
    // A projected ServiceAccount token's shape (header.claims.signature, base64url).
    assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVtbzp3ZWIifQ.c2lnbmF0dXJlLV8"));
    for bad in ["", "not-a-token", "a.b", "a..c", "a.b.c.d", "a.b.c=", "a.b.c\n", "knit1.abc.def ", "a.b/c.d"] {
        assert!(!looks_like_jwt(bad), "{bad:?}");
    }
}

#[tokio::test]
async fn a_token_that_is_not_a_jwt_costs_no_review() {
    let (client, seen) = api_server(vec![]).await;
    let err = KubernetesTokens::new(client, naming()).validate(b"not a token").await.unwrap_err();
    assert_eq!(err.reason, "token_invalid");
    assert!(seen.lock().unwrap().is_empty());
}
