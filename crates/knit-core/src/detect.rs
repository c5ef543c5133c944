//! Protocol detection over the first bytes a client sent: the decision only, as a pure function.
//! The proxy owns the reading and the timers (`knit_proxy::detect`).

use crate::transport_header;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 with prior knowledge (the client preface).
    Http2,
    /// An HTTP/1.x request line.
    Http1,
    /// A TLS ClientHello, with its server name when it carried one.
    Tls { sni: Option<String> },
    /// Linkerd's transport header: a peer proxy's direct connection.
    TransportHeader,
    /// Anything else: forwarded byte for byte.
    Opaque,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detection {
    Done(Protocol),
    /// The bytes so far are a prefix of more than one answer; read more.
    NeedMore,
}

/// Classifies `buf`, the bytes read so far. Callers stop reading at a size limit or a timeout and
/// then call [`give_up`].
pub fn detect(buf: &[u8]) -> Detection {
    if buf.is_empty() {
        return Detection::NeedMore;
    }
    if let Some(d) = prefix_match(buf, H2_PREFACE, Protocol::Http2) {
        return d;
    }
    if let Some(d) = prefix_match(buf, transport_header::PREFACE, Protocol::TransportHeader) {
        return d;
    }
    if buf[0] == 0x16 {
        return tls(buf);
    }
    http1(buf)
}

/// The answer when no more bytes will come in time. A buffer that filled up while it still looked
/// like an HTTP/1 head is HTTP/1 (the HTTP server then answers 431 for the oversized head);
/// anything else incomplete is opaque.
pub fn give_up(buf: &[u8], buffer_full: bool) -> Protocol {
    match detect(buf) {
        Detection::Done(p) => p,
        Detection::NeedMore if buffer_full && looks_like_http1(buf) => Protocol::Http1,
        Detection::NeedMore => Protocol::Opaque,
    }
}

fn prefix_match(buf: &[u8], preface: &[u8], p: Protocol) -> Option<Detection> {
    let n = buf.len().min(preface.len());
    if buf[..n] != preface[..n] {
        return None;
    }
    Some(if n == preface.len() { Detection::Done(p) } else { Detection::NeedMore })
}

fn looks_like_http1(buf: &[u8]) -> bool {
    matches!(http1(buf), Detection::NeedMore | Detection::Done(Protocol::Http1))
}

/// HTTP/1 is decided by the request line alone: once a valid one has arrived, the connection is
/// HTTP whatever follows (the HTTP server answers a malformed header with 400). Judging the
/// headers too would make the answer depend on where the client's bytes were split: a request
/// whose first segment ends before a malformed header would be HTTP, the same bytes in one
/// segment opaque, forwarded past HTTP routes and authorization to an application whose parser
/// may be more lenient (found by the `detect` fuzz target).
fn http1(buf: &[u8]) -> Detection {
    let line = buf.iter().position(|b| *b == b'\n').map(|i| &buf[..=i]);
    // No header slots: only the request line is parsed.
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(line.unwrap_or(buf)) {
        // A complete line parses as Partial (the head goes on), or Complete for a line that is
        // also the end of the head ("GET / HTTP/1.1\n" then "\n" is not in `line`).
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => Detection::Done(Protocol::Http1),
        Ok(httparse::Status::Partial) if line.is_some() => Detection::Done(Protocol::Http1),
        Ok(httparse::Status::Partial) => Detection::NeedMore,
        Err(_) => Detection::Done(Protocol::Opaque),
    }
}

/// TLS record: type 0x16 (handshake), version 0x03xx, 2-byte length; then a ClientHello (type 1).
fn tls(buf: &[u8]) -> Detection {
    if buf.len() < 5 {
        let plausible = buf.len() < 2 || buf[1] == 0x03;
        return if plausible { Detection::NeedMore } else { Detection::Done(Protocol::Opaque) };
    }
    if buf[1] != 0x03 {
        return Detection::Done(Protocol::Opaque);
    }
    let record_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    let Some(record) = buf.get(5..5 + record_len) else {
        return Detection::NeedMore;
    };
    match client_hello_sni(record) {
        Some(sni) => Detection::Done(Protocol::Tls { sni }),
        None => Detection::Done(Protocol::Opaque),
    }
}

/// Returns `None` when the record is not a ClientHello, `Some(None)` for a ClientHello without a
/// server name.
fn client_hello_sni(record: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None;
    }
    let len = r.u24()?;
    let body = r.take(len)?;
    let mut r = Reader(body);
    r.take(2 + 32)?; // client_version, random
    let session_len = usize::from(r.u8()?);
    r.take(session_len)?;
    let suites_len = usize::from(r.u16()?);
    r.take(suites_len)?;
    let compression_len = usize::from(r.u8()?);
    r.take(compression_len)?;
    if r.0.is_empty() {
        return Some(None);
    }
    let ext_len = usize::from(r.u16()?);
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let data = exts.take(len)?;
        if ty == 0 {
            let mut d = Reader(data);
            let list_len = usize::from(d.u16()?);
            let mut list = Reader(d.take(list_len)?);
            while !list.0.is_empty() {
                let name_type = list.u8()?;
                let name_len = usize::from(list.u16()?);
                let name = list.take(name_len)?;
                if name_type == 0 {
                    return Some(std::str::from_utf8(name).ok().map(str::to_ascii_lowercase));
                }
            }
        }
    }
    Some(None)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3).map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests;
