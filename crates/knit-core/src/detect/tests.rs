use super::*;

fn done(p: Protocol) -> Detection {
    Detection::Done(p)
}

/// A minimal, well-formed ClientHello record carrying `sni`.
fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let n = name.as_bytes();
        let entry_len = 3 + n.len();
        ext.extend_from_slice(&[0, 0]); // server_name
        ext.extend_from_slice(&((entry_len + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(entry_len as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
        ext.extend_from_slice(n);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn http2_preface() {
    assert_eq!(detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"), done(Protocol::Http2));
    assert_eq!(detect(b"PRI * HTTP/2"), Detection::NeedMore);
}

#[test]
fn http1_request_lines() {
    assert_eq!(detect(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), done(Protocol::Http1));
    assert_eq!(detect(b"POST /x HTTP/1.0\r\nContent-Length: 1\r\n"), done(Protocol::Http1));
    assert_eq!(detect(b"GET /pa"), Detection::NeedMore);
    assert_eq!(detect(b"CONNECT a:443 HTTP/1.1\r\n\r\n"), done(Protocol::Http1));
    // Linkerd's detection is a prefix match too: the method is a token, whatever its name.
    assert_eq!(detect(b"PRIX / HTTP/1.1\r\n\r\n"), done(Protocol::Http1));
}

#[test]
fn server_speaks_first_and_binary_protocols_are_opaque() {
    assert_eq!(detect(b"\x00\x01\x02\x03"), done(Protocol::Opaque));
    assert_eq!(detect(b"*1\r\n$4\r\nPING\r\n"), done(Protocol::Opaque)); // redis RESP
    assert_eq!(detect(b"GET / FTP/1.1\r\n"), done(Protocol::Opaque));
    assert_eq!(detect(b"\x16\x02"), done(Protocol::Opaque));
}

#[test]
fn tls_client_hello_with_and_without_sni() {
    let hello = client_hello(Some("Web.NS.serviceaccount.identity.knit.cluster.local"));
    assert_eq!(detect(&hello), done(Protocol::Tls { sni: Some("web.ns.serviceaccount.identity.knit.cluster.local".into()) }));
    for cut in 1..hello.len() {
        assert_eq!(detect(&hello[..cut]), Detection::NeedMore, "prefix {cut}");
    }
    assert_eq!(detect(&client_hello(None)), done(Protocol::Tls { sni: None }));
}

#[test]
fn transport_header_preface() {
    let h = crate::transport_header::TransportHeader { port: 80, name: None, protocol: None }.encode();
    assert_eq!(detect(&h), done(Protocol::TransportHeader));
    assert_eq!(detect(&h[..5]), Detection::NeedMore);
}

#[test]
fn giving_up() {
    assert_eq!(give_up(b"", false), Protocol::Opaque);
    assert_eq!(give_up(b"GET /slow", false), Protocol::Opaque);
    let long = [b"GET /".as_slice(), &[b'a'; 9000]].concat();
    assert_eq!(give_up(&long, true), Protocol::Http1);
    assert_eq!(give_up(b"GET / HTTP/1.1\r\n", false), Protocol::Http1);
}

#[test]
fn never_panics_on_arbitrary_prefixes() {
    // A cheap stand-in for the fuzz target: every prefix of every mutation of known inputs.
    let seeds = [client_hello(Some("a.b")), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()];
    for seed in seeds {
        for i in 0..seed.len() {
            for flip in [0x00u8, 0xff, 0x80, 0x01] {
                let mut m = seed.clone();
                m[i] ^= flip;
                for cut in 0..=m.len() {
                    let _ = detect(&m[..cut]);
                    let _ = give_up(&m[..cut], cut == m.len());
                }
            }
        }
    }
}

/// Found by the `detect` fuzz target: a valid request line followed by a malformed header was
/// HTTP/1 when the header had not arrived yet and opaque when it had, so the same bytes were
/// HTTP or raw TCP depending on how the client split them. The request line alone decides now.
#[test]
fn the_decision_does_not_depend_on_where_the_bytes_were_split() {
    let crash: &[u8] = b"GET /books HTTP/1.1\r\nHost: books\r.transport.l5d.io/v1\n\r";
    let bad_header: &[u8] = b"GET /admin HTTP/1.1\r\nHost: x\rfoo: bar\r\n\r\n";
    let good: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for input in [crash, bad_header, good] {
        let mut decided = None;
        for end in 1..=input.len() {
            if let Detection::Done(p) = detect(&input[..end]) {
                assert_eq!(*decided.get_or_insert(p.clone()), p, "{:?} at {end} bytes", String::from_utf8_lossy(input));
            }
        }
        assert_eq!(decided, Some(Protocol::Http1), "{:?}", String::from_utf8_lossy(input));
    }
    assert_eq!(detect(b"GET\x01/ HTTP/1.1\r\n"), done(Protocol::Opaque), "an invalid request line is still not HTTP");
}
