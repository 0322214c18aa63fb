use super::*;

fn head_of(bytes: &[u8], head_request: bool) -> Result<Head, BadResponse> {
    let mut buf = BytesMut::from(bytes);
    loop {
        match parse_head(&mut buf, head_request)? {
            Parsed::Head(h) => return Ok(h),
            Parsed::Informational => {}
            Parsed::Partial => return Err(BadResponse("partial")),
        }
    }
}

fn framed(bytes: &[u8]) -> (&'static str, bool) {
    let h = head_of(bytes, false).expect("head");
    let kind = match h.framing {
        Framing::Ended => "ended",
        Framing::Length(_) => "length",
        Framing::Chunked(_) => "chunked",
        Framing::Close => "close",
    };
    (kind, h.keep_alive)
}

#[test]
fn a_head_parses_only_once_it_is_whole_however_it_arrives() {
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b c\r\nx-a: d\r\n\r\nhello";
    let end = answer.len() - 5;
    for cut in 1..end {
        let mut buf = BytesMut::from(&answer[..cut]);
        assert!(
            matches!(parse_head(&mut buf, false), Ok(Parsed::Partial)),
            "{cut} bytes"
        );
        assert_eq!(buf.len(), cut, "a partial head is left in place");
    }
    let mut buf = BytesMut::from(&answer[..]);
    let Ok(Parsed::Head(h)) = parse_head(&mut buf, false) else {
        panic!("the whole head parses");
    };
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.version, Version::HTTP_11);
    let a: Vec<_> = h.headers.get_all("x-a").iter().collect();
    assert_eq!(a, ["b c", "d"]);
    assert!(matches!(h.framing, Framing::Length(5)));
    assert!(h.keep_alive);
    assert_eq!(&buf[..], b"hello", "the body is left in the buffer");
}

#[test]
fn informational_answers_are_passed_over_and_a_101_is_handed_on() {
    let h = head_of(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        false,
    )
    .expect("head");
    assert_eq!(h.status, StatusCode::NO_CONTENT);
    assert!(
        !h.headers.contains_key("link"),
        "the 103's fields stay with it"
    );
    let h = head_of(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        false,
    )
    .expect("head");
    assert_eq!(h.status, StatusCode::SWITCHING_PROTOCOLS);
    assert!(matches!(h.framing, Framing::Ended) && !h.keep_alive);
}

#[test]
fn bodies_are_framed_as_rfc_9112_says() {
    assert_eq!(
        framed(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"),
        ("length", true)
    );
    assert_eq!(
        framed(b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n"),
        ("length", true)
    );
    assert_eq!(
        framed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ("ended", true)
    );
    assert_eq!(
        framed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
        ("chunked", true)
    );
    assert_eq!(
        framed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
        ("chunked", false),
        "both: chunked, and the connection is not trusted again"
    );
    assert_eq!(
        framed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ("close", false)
    );
    assert_eq!(framed(b"HTTP/1.1 200 OK\r\n\r\n"), ("close", false));
    assert_eq!(
        framed(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
        ("ended", true)
    );
    let h = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).expect("head");
    assert!(matches!(h.framing, Framing::Ended), "a HEAD's answer");
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    ] {
        assert!(
            head_of(bad, false).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn connections_stay_open_unless_either_version_or_a_field_says_otherwise() {
    let alive = |bytes: &[u8]| framed(bytes).1;
    assert!(alive(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"));
    assert!(!alive(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 1\r\n\r\n"
    ));
    assert!(!alive(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"));
    assert!(alive(
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n"
    ));
}

/// Feeds `body` to a chunked decoder `step` bytes at a time: the data, and the trailers.
fn decode(body: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), BadResponse> {
    let mut state = Chunk::Size;
    let mut buf = BytesMut::new();
    let (mut data, mut trailers) = (Vec::new(), None);
    let mut fed = 0;
    loop {
        match decode_chunked(&mut state, &mut buf, 64 * 1024)? {
            Step::Frame(f) => match f.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            },
            Step::End => {
                assert!(buf.is_empty(), "nothing left after the body");
                return Ok((data, trailers));
            }
            Step::More if fed == body.len() => return Err(BadResponse("ran out")),
            Step::More => {
                let to = (fed + step).min(body.len());
                buf.extend_from_slice(&body[fed..to]);
                fed = to;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_however_they_arrive() {
    let body = b"5;ext=1;q=\"a b\"\r\nhello\r\n6 \r\n world\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 42\r\nx-more: a\r\n\r\n";
    for step in [1, 2, 3, 7, body.len()] {
        let (data, trailers) = decode(body, step).expect("decodes");
        assert_eq!(
            data, b"hello worldabcdefghijklmnopqrstuvwxyz",
            "step {step}"
        );
        let t = trailers.expect("trailers");
        assert_eq!(t.get("x-sum").map(|v| v.as_bytes()), Some(&b"42"[..]));
        assert_eq!(t.get("x-more").map(|v| v.as_bytes()), Some(&b"a"[..]));
    }
    let (data, trailers) = decode(b"3\r\nabc\r\n0\r\n\r\n", 1).expect("no trailers");
    assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
}

#[test]
fn bad_chunks_are_errors() {
    let long = [
        &b"5;"[..],
        &b"x".repeat(MAX_CHUNK_LINE + 1),
        b"\r\nhello\r\n0\r\n\r\n",
    ]
    .concat();
    for bad in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5 x\r\nhello\r\n0\r\n\r\n",
        b"10000000000000005\r\nhello\r\n0\r\n\r\n",
        b"0\r\nbad trailer\r\n\r\n",
        &long,
    ] {
        assert!(
            decode(bad, 1).is_err(),
            "{}",
            String::from_utf8_lossy(&bad[..bad.len().min(40)])
        );
    }
}

#[test]
fn a_request_head_is_written_as_hyper_writes_it() {
    let mut req = Request::new(RequestBody::empty());
    *req.method_mut() = http::Method::GET;
    *req.uri_mut() = "/p?q=1".parse().expect("uri");
    let h = req.headers_mut();
    h.insert("host", HeaderValue::from_static("a.example"));
    h.append("x-a", HeaderValue::from_static("1"));
    h.append("x-a", HeaderValue::from_static("2"));
    h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    let mut out = Vec::new();
    encode_head(&req, &mut out);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "GET /p?q=1 HTTP/1.1\r\nhost: a.example\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
    );
}
