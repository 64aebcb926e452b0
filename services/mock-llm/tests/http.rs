//! The mock over real HTTP: what tests and benchmarks rely on.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{json, Value};
use sluice_mock_llm::{router, App, MockConfig};

async fn start(config: MockConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(App::new(config))).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn chat_json_stream_recording_and_failures() {
    let base = start(MockConfig::default()).await;
    let http = reqwest::Client::new();
    let chat =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});

    let r: Value = http
        .post(format!("{base}/v1/chat/completions"))
        .header("x-test", "1")
        .json(&chat)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["usage"]["completion_tokens"], 4);
    assert_eq!(r["choices"][0]["finish_reason"], "length");

    let mut stream_req = chat.clone();
    stream_req["stream"] = json!(true);
    stream_req["stream_options"] = json!({"include_usage": true});
    let text = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&stream_req)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(text.contains(r#""choices":[],"#), "{text}");

    let recorded: Value = http
        .get(format!("{base}/_mock/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = &recorded[0];
    assert_eq!(first["path"], "/v1/chat/completions");
    assert!(first["headers"]
        .as_array()
        .unwrap()
        .contains(&json!(["x-test", "1"])));
    assert_eq!(
        serde_json::from_str::<Value>(first["body"].as_str().unwrap()).unwrap(),
        chat
    );

    http.put(format!("{base}/_mock/config"))
        .json(&json!({"fail_status": 503, "fail_count": 1, "healthy": false}))
        .send()
        .await
        .unwrap();
    let status =
        |req: reqwest::RequestBuilder| async move { req.send().await.unwrap().status().as_u16() };
    let chat_url = format!("{base}/v1/chat/completions");
    let statuses = [
        status(http.post(&chat_url).json(&chat)).await,
        status(http.post(&chat_url).json(&chat)).await,
        status(http.get(format!("{base}/health"))).await,
    ];
    assert_eq!(statuses, [503, 200, 503]);

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("vllm:num_requests_running{model_name=\"mock\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn disconnect_mid_stream_cuts_the_body() {
    let base = start(MockConfig {
        disconnect_after: Some(2),
        ..MockConfig::default()
    })
    .await;
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.text().await.is_err(),
        "the body should end in an error"
    );
}
