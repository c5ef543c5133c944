//! Linkerd's transport header (`transport.l5d.io/v1`): the first bytes a client proxy writes on a
//! connection to a peer proxy's inbound port, naming the real target port and, when known, the
//! session protocol, so the peer needs no detection.
//!
//! Wire format: the ASCII preface `transport.l5d.io/v1\r\n\r\n`, a 4-byte big-endian length, then
//! the protobuf `transport.l5d.io.Header { int32 port = 1; string name = 2; SessionProtocol
//! session_protocol = 3; }` where `SessionProtocol` is `oneof kind { Http1 http1 = 1; Http2 http2 = 2; }`
//! of empty messages. The codec is written by hand: three fields do not justify a protobuf
//! toolchain in the proxy's hot path.

pub const PREFACE: &[u8] = b"transport.l5d.io/v1\r\n\r\n";
/// The ALPN protocol id that negotiates the header once mesh TLS is in place.
pub const ALPN: &[u8] = b"transport.l5d.io/v1";
/// Headers larger than this are refused: a port and a DNS name fit in far less.
pub const MAX_LEN: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionProtocol {
    Http1,
    Http2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportHeader {
    pub port: u16,
    /// Gateway forwarding target; `None` for an ordinary meshed connection.
    pub name: Option<String>,
    /// `None` means opaque TCP.
    pub protocol: Option<SessionProtocol>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("transport header: the connection does not start with the transport.l5d.io/v1 preface")]
    NoPreface,
    #[error("transport header: declared length {0} exceeds the {MAX_LEN}-byte limit")]
    TooLong(usize),
    #[error("transport header: malformed protobuf ({0})")]
    Malformed(&'static str),
    #[error("transport header: port {0} is not a valid TCP port")]
    BadPort(i64),
}

/// What [`decode`] found in a buffer that may still be incomplete.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The header and how many bytes of the buffer it used; the rest is application data.
    Complete(TransportHeader, usize),
    /// The buffer is a valid prefix of a header; read more.
    Incomplete,
}

impl TransportHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(32);
        put_varint(&mut body, 1 << 3); // field 1, varint
        put_varint(&mut body, u64::from(self.port));
        if let Some(name) = &self.name {
            put_varint(&mut body, (2 << 3) | 2); // field 2, length-delimited
            put_varint(&mut body, name.len() as u64);
            body.extend_from_slice(name.as_bytes());
        }
        if let Some(p) = self.protocol {
            let kind = match p {
                SessionProtocol::Http1 => 1u64,
                SessionProtocol::Http2 => 2,
            };
            // field 3 holds a message whose only field is an empty message.
            body.extend_from_slice(&[(3 << 3) | 2, 2, ((kind << 3) | 2) as u8, 0]);
        }
        let mut out = Vec::with_capacity(PREFACE.len() + 4 + body.len());
        out.extend_from_slice(PREFACE);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// Decodes a header from the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Decoded, HeaderError> {
    let n = buf.len().min(PREFACE.len());
    if buf[..n] != PREFACE[..n] {
        return Err(HeaderError::NoPreface);
    }
    let Some(len_bytes) = buf.get(PREFACE.len()..PREFACE.len() + 4) else {
        return Ok(Decoded::Incomplete);
    };
    let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
    if len > MAX_LEN {
        return Err(HeaderError::TooLong(len));
    }
    let start = PREFACE.len() + 4;
    let Some(body) = buf.get(start..start + len) else {
        return Ok(Decoded::Incomplete);
    };
    Ok(Decoded::Complete(decode_body(body)?, start + len))
}

fn decode_body(mut b: &[u8]) -> Result<TransportHeader, HeaderError> {
    let mut port = 0i64;
    let mut name = None;
    let mut protocol = None;
    while !b.is_empty() {
        let key = take_varint(&mut b)?;
        match (key >> 3, key & 7) {
            (1, 0) => port = take_varint(&mut b)? as i32 as i64,
            (2, 2) => {
                let s = take_len(&mut b)?;
                let s = std::str::from_utf8(s).map_err(|_| HeaderError::Malformed("name is not UTF-8"))?;
                name = (!s.is_empty()).then(|| s.to_string());
            }
            (3, 2) => {
                let mut m = take_len(&mut b)?;
                while !m.is_empty() {
                    let k = take_varint(&mut m)?;
                    match (k >> 3, k & 7) {
                        (1, 2) => protocol = Some(SessionProtocol::Http1),
                        (2, 2) => protocol = Some(SessionProtocol::Http2),
                        _ => {}
                    }
                    skip_field(&mut m, k)?;
                }
            }
            _ => skip_field(&mut b, key)?,
        }
    }
    let port = u16::try_from(port).ok().filter(|p| *p != 0).ok_or(HeaderError::BadPort(port))?;
    Ok(TransportHeader { port, name, protocol })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(b: &mut &[u8]) -> Result<u64, HeaderError> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first().ok_or(HeaderError::Malformed("truncated varint"))?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(HeaderError::Malformed("varint longer than 10 bytes"))
}

fn take_len<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], HeaderError> {
    let len = take_varint(b)? as usize;
    if len > b.len() {
        return Err(HeaderError::Malformed("length past the end"));
    }
    let (field, rest) = b.split_at(len);
    *b = rest;
    Ok(field)
}

/// Skips the value of a field whose key was already read; for fields the key matched, the value
/// was consumed already except for length-delimited ones, which are skipped here.
fn skip_field(b: &mut &[u8], key: u64) -> Result<(), HeaderError> {
    match key & 7 {
        0 => take_varint(b).map(drop),
        1 | 5 => {
            let n = if key & 7 == 1 { 8 } else { 4 };
            if b.len() < n {
                return Err(HeaderError::Malformed("truncated fixed field"));
            }
            *b = &b[n..];
            Ok(())
        }
        2 => take_len(b).map(drop),
        _ => Err(HeaderError::Malformed("unsupported wire type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for h in [
            TransportHeader { port: 8080, name: None, protocol: None },
            TransportHeader { port: 1, name: Some("web.ns.svc.cluster.local".into()), protocol: Some(SessionProtocol::Http1) },
            TransportHeader { port: 65535, name: None, protocol: Some(SessionProtocol::Http2) },
        ] {
            let mut bytes = h.encode();
            bytes.extend_from_slice(b"app data");
            match decode(&bytes).unwrap() {
                Decoded::Complete(got, used) => {
                    assert_eq!(got, h);
                    assert_eq!(&bytes[used..], b"app data");
                }
                other => panic!("{other:?}"),
            }
            for cut in 0..bytes.len() - 8 {
                assert_eq!(decode(&bytes[..cut]), Ok(Decoded::Incomplete), "prefix of {cut} bytes");
            }
        }
    }

    #[test]
    fn matches_the_protobuf_encoding() {
        // port 4143 = varint 0xaf 0x20; http2 = field 3 { field 2 {} }.
        let h = TransportHeader { port: 4143, name: None, protocol: Some(SessionProtocol::Http2) };
        assert_eq!(&h.encode()[PREFACE.len()..], &[0, 0, 0, 7, 0x08, 0xaf, 0x20, 0x1a, 0x02, 0x12, 0x00]);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Err(HeaderError::NoPreface));
        let mut too_long = PREFACE.to_vec();
        too_long.extend_from_slice(&(MAX_LEN as u32 + 1).to_be_bytes());
        assert_eq!(decode(&too_long), Err(HeaderError::TooLong(MAX_LEN + 1)));
        let mut no_port = PREFACE.to_vec();
        no_port.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(decode(&no_port), Err(HeaderError::BadPort(0)));
        let mut truncated = PREFACE.to_vec();
        truncated.extend_from_slice(&[0, 0, 0, 2, 0x12, 0x05]);
        assert!(matches!(decode(&truncated), Err(HeaderError::Malformed(_))));
    }
}
