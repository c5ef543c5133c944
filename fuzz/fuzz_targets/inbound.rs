//! An inbound connection end to end: arbitrary bytes from a client with no credentials to a
//! running knit-proxy's inbound port (detection, HTTP/1 and HTTP/2 serving, the transport
//! header, TLS passthrough), in front of an application that answers every request. The proxy
//! must answer or close within its time bounds, and keep serving: after each input a
//! well-formed request still gets its answer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::{net::SocketAddr, sync::OnceLock, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    runtime::Runtime,
};

struct Running {
    rt: Runtime,
    inbound: SocketAddr,
}

fn running() -> &'static Running {
    static RUNNING: OnceLock<Running> = OnceLock::new();
    RUNNING.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let inbound = rt.block_on(async {
            // The application: answers every HTTP/1 request with 200, whatever else it gets.
            let app = TcpListener::bind("127.0.0.1:0").await.expect("app");
            let app_addr = app.local_addr().expect("app addr");
            tokio::spawn(async move {
                while let Ok((mut tcp, _)) = app.accept().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = tcp.read(&mut buf).await {
                            if n == 0 || tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            let mut config = knit_proxy::config::Config::loopback();
            config.inbound.target_addr = Some(app_addr);
            config.detect.silent_timeout = Duration::from_millis(20);
            config.detect.timeout = Duration::from_millis(200);
            config.http.header_read_timeout = Duration::from_millis(200);
            let proxy = knit_proxy::Proxy::bind(config, None).await.expect("proxy");
            let inbound = proxy.addrs().inbound;
            tokio::spawn(proxy.run(std::future::pending()));
            inbound
        });
        Running { rt, inbound }
    })
}

fuzz_target!(|data: &[u8]| {
    let r = running();
    r.rt.block_on(async {
        let mut tcp = TcpStream::connect(r.inbound).await.expect("connect");
        let _ = tcp.write_all(data).await;
        let _ = tcp.shutdown().await;
        let mut out = Vec::new();
        // Everything the proxy does with these bytes is bounded by its timeouts.
        let answered = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
        assert!(answered.is_ok(), "the proxy neither answered nor closed within 5 s");
        // The proxy still serves.
        let mut ok = TcpStream::connect(r.inbound).await.expect("connect");
        ok.write_all(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n").await.expect("write");
        let mut rsp = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), ok.read_to_end(&mut rsp)).await.expect("answered in time").expect("read");
        assert!(rsp.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&rsp));
    });
});
