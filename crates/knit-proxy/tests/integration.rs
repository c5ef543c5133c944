//! knit-proxy's integration tests: real sockets on 127.0.0.1, real clients (curl, nghttp, h2load,
//! redis-cli, Python grpcio) and the proxy in-process or as its binary. One test binary.

// Helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod harness;

mod integration {
    mod abuse;
    mod admin;
    mod bad_input;
    mod discovery;
    mod grpc;
    mod http1;
    mod http2;
    mod mtls;
    mod shutdown;
    mod tcp;
}
