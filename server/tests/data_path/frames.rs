//! Raw frames a well-behaved client never sends, and a client talking to a
//! server that lacks an op.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_clear_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let addr = r.data_addr.unwrap();
    let c = client(&r, CarrierChoice::Tcp, 1).await;
    c.put(&k("kv/b/v"), Bytes::from_static(b"value"))
        .await
        .unwrap();

    // Bad metadata: that request fails, the connection goes on.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bad = Header::request(Op::Get, 7, 0, 5, 0).encode().to_vec();
    bad.extend_from_slice(&[0xff; 5]);
    let (h, meta, _) = raw_call(&mut s, &bad, b"").await;
    assert_eq!((h.id, h.status), (7, Status::Invalid));
    assert!(
        response::decode_error(&meta).contains("bad Get request"),
        "{meta:?}"
    );
    let get = request_frame(
        8,
        0,
        &Request::Get {
            key: k("kv/b/v"),
            offset: 0,
            length: None,
        },
        0,
    );
    let (h, _, data) = raw_call(&mut s, &get, b"").await;
    assert_eq!((h.id, h.status), (8, Status::Ok));
    assert_eq!(&data[..], b"value");

    // A PUT whose checksum is wrong is refused and never visible.
    let put = request_frame(
        9,
        0,
        &Request::Put {
            key: k("kv/b/crc"),
            crc32c: 1234,
        },
        3,
    );
    let (h, _, _) = raw_call(&mut s, &put, b"abc").await;
    assert_eq!((h.id, h.status), (9, Status::Checksum));
    assert!(c.get(&k("kv/b/crc")).await.unwrap().is_none());

    // A truncated PUT (the client goes away mid-data) leaves nothing behind.
    let put = request_frame(
        10,
        0,
        &Request::Put {
            key: k("kv/b/trunc"),
            crc32c: 0,
        },
        1000,
    );
    s.write_all(&put).await.unwrap();
    s.write_all(&[1u8; 10]).await.unwrap();
    drop(s);

    // A broken header: an error answer, then the connection is closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut junk = [0u8; HEADER_LEN];
    junk[0..2].copy_from_slice(b"XX");
    let (h, meta, _) = raw_call(&mut s, &junk, b"").await;
    assert_eq!(h.status, Status::Invalid);
    assert!(response::decode_error(&meta).contains("magic"));
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).await.unwrap(), 0, "closed");

    // An oversized frame is refused from its header alone.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let huge = Header::request(Op::Put, 11, 0, 0, 1 << 40).encode();
    let (h, meta, _) = raw_call(&mut s, &huge, b"").await;
    assert_eq!(h.status, Status::Invalid);
    assert!(response::decode_error(&meta).contains("over the limit"));

    assert!(c.get(&k("kv/b/trunc")).await.unwrap().is_none());
    assert_eq!(c.get(&k("kv/b/v")).await.unwrap().unwrap(), &b"value"[..]);
    r.shutdown().await.unwrap();
}

/// A proxy in front of the real data port that makes the server look like an
/// older release: its HELLO answer (the first frame it sends on a connection) says
/// it does not serve `missing`.
async fn older_server_proxy(upstream: std::net::SocketAddr, missing: Op) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            tokio::spawn(async move {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                };
                let down = async {
                    let (h, meta, _) = raw_read(&mut sr).await;
                    assert_eq!(h.op, Op::Hello);
                    let mut info = response::decode_hello(&meta).unwrap();
                    info.ops &= !missing.bit();
                    let mut m = BytesMut::new();
                    response::encode_hello(&mut m, &info);
                    let head = Header::response(Op::Hello, h.id, Status::Ok, m.len(), 0);
                    cw.write_all(&head.encode()).await.unwrap();
                    cw.write_all(&m).await.unwrap();
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

/// Against a server that lacks an op (an older release, in a rolling upgrade), a
/// call that needs it fails before anything is sent, naming the op, and the
/// connection serves the other calls on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_the_server_lacks_fails_alone_and_the_connection_goes_on() {
    use strata_transport::data::{DataClient, DataEndpoint};
    use strata_transport::wire::KeyRange;
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let proxy = older_server_proxy(r.data_addr.unwrap(), Op::MGetRange).await;
    let c = DataClient::connect(
        DataEndpoint {
            tcp: Some(proxy.to_string()),
            unix: None,
            host_id: None,
        },
        DataOptions {
            carrier: CarrierChoice::Tcp,
            connections: 1,
            ..DataOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(c.server().ops & Op::MGetRange.bit(), 0);
    let value = pattern(10_000, 3);
    c.put(&k("kv/o/a"), &value).await.unwrap();
    let ranges = [KeyRange {
        key: k("kv/o/a"),
        offset: 0,
        length: Some(10),
    }];
    let e = c.mget_range_with(&ranges, |_, _| ()).await.unwrap_err();
    assert!(
        matches!(e, ClientError::Unsupported(Op::MGetRange)),
        "{e:?}"
    );
    assert!(e.to_string().contains("MGetRange"), "{e}");
    assert_eq!(c.get(&k("kv/o/a")).await.unwrap().unwrap(), value);
    r.shutdown().await.unwrap();
}
