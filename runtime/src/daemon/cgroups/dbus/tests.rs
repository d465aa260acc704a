//! Tests of the D-Bus client: messages against the specification's bytes, and calls to a fake bus.
use super::*;

#[test]
fn a_call_with_su_is_the_bytes_the_specification_gives() {
    let mut msg = Message::call("", "/a", "", "M", vec![Value::str("x"), Value::U32(7)]);
    msg.interface = None;
    // Worked by hand from the specification: header fields PATH, MEMBER, SIGNATURE,
    // each a struct (8-aligned) of a code and a variant; the body 8-aligned.
    #[rustfmt::skip]
        let want: &[u8] = &[
            b'l', 1, 0, 1,          // little-endian, METHOD_CALL, no flags, version 1
            12, 0, 0, 0,            // body length
            1, 0, 0, 0,             // serial
            40, 0, 0, 0,            // header fields array: 40 bytes, from offset 16
            1, 1, b'o', 0,          // PATH, variant signature "o"
            2, 0, 0, 0, b'/', b'a', 0, // "/a"
            0, 0, 0, 0, 0,          // pad to 32
            3, 1, b's', 0,          // MEMBER, variant signature "s"
            1, 0, 0, 0, b'M', 0,    // "M"
            0, 0, 0, 0, 0, 0,       // pad to 48
            8, 1, b'g', 0,          // SIGNATURE, variant signature "g"
            2, b's', b'u', 0,       // "su"; the header ends at 56, 8-aligned
            1, 0, 0, 0, b'x', 0,    // body: "x"
            0, 0,                   // pad to 4
            7, 0, 0, 0,             // 7
        ];
    let bytes = msg.encode().unwrap();
    assert_eq!(bytes, want);
    assert_eq!(Message::decode(&bytes).unwrap(), msg);
}

/// StartTransientUnit's arguments, `ssa(sv)a(sa(sv))`.
fn transient_args() -> Vec<Value> {
    let prop = |k: &str, v: Value| Value::Struct(vec![Value::str(k), Value::variant(v)]);
    vec![
        Value::str("berth-p1.scope"),
        Value::str("fail"),
        Value::Array(
            "(sv)".into(),
            vec![
                prop("Slice", Value::str("berth.slice")),
                prop("PIDs", Value::Array("u".into(), vec![Value::U32(42)])),
                prop("Delegate", Value::Bool(true)),
                prop("MemoryMax", Value::U64(1 << 30)),
            ],
        ),
        Value::Array("(sa(sv))".into(), Vec::new()),
    ]
}

#[test]
fn values_round_trip() {
    let mut msg = Message::call(
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "StartTransientUnit",
        transient_args(),
    );
    msg.serial = 9;
    assert_eq!(msg.signature(), "ssa(sv)a(sa(sv))");
    let bytes = msg.encode().unwrap();
    assert_eq!(Message::decode(&bytes).unwrap(), msg);

    let mut every = Message::call("", "/", "i.f", "M", Vec::new());
    every.kind = Kind::MethodReturn;
    every.reply_serial = Some(3);
    every.body = vec![
        Value::Byte(1),
        Value::I16(-2),
        Value::U64(3),
        Value::U16(4),
        Value::F64(0.5),
        Value::I64(-6),
        Value::Signature("a{sv}".into()),
        Value::Array(
            "{sv}".into(),
            vec![Value::DictEntry(
                Box::new(Value::str("k")),
                Box::new(Value::variant(Value::Struct(vec![
                    Value::Byte(7),
                    Value::I32(-8),
                ]))),
            )],
        ),
        Value::Array("t".into(), Vec::new()),
        Value::Array("y".into(), vec![Value::Byte(9)]),
    ];
    assert_eq!(Message::decode(&every.encode().unwrap()).unwrap(), every);
}

#[test]
fn empty_arrays_still_pad_to_their_element() {
    let mut enc = Encoder::default();
    enc.put(&Value::Array("(sv)".into(), Vec::new())).unwrap();
    // Length 0, then padding to 8 that the length does not count.
    assert_eq!(enc.buf, [0, 0, 0, 0, 0, 0, 0, 0]);
    let mut enc = Encoder::default();
    enc.put(&Value::Array("u".into(), vec![Value::U32(42)]))
        .unwrap();
    assert_eq!(enc.buf, [4, 0, 0, 0, 42, 0, 0, 0]);
}

#[test]
fn big_endian_replies_are_read() {
    #[rustfmt::skip]
        let reply: &[u8] = &[
            b'B', 2, 1, 1,          // big-endian METHOD_RETURN, NO_REPLY_EXPECTED
            0, 0, 0, 7,             // body length
            0, 0, 0, 5,             // serial
            0, 0, 0, 15,            // header fields: 15 bytes
            5, 1, b'u', 0, 0, 0, 0, 9, // REPLY_SERIAL 9
            8, 1, b'g', 0, 1, b'o', 0, // SIGNATURE "o"
            0,                      // pad to 32
            0, 0, 0, 2, b'/', b'x', 0, // "/x"
        ];
    let m = Message::decode(reply).unwrap();
    assert_eq!(m.kind, Kind::MethodReturn);
    assert_eq!(m.reply_serial, Some(9));
    assert_eq!(m.body, vec![Value::ObjectPath("/x".into())]);
}

#[test]
fn calls_are_answered_and_refusals_named() {
    let t = tempfile::tempdir().unwrap();
    let calls = fake::serve(&t.path().join("bus"), |call| match call.member.as_deref() {
        Some("GetUnit") => Ok(vec![Value::ObjectPath("/u".into())]),
        _ => Err(("org.example.Nope".into(), "not this one".into())),
    });
    let mut conn = Connection::open(&t.path().join("bus"), true, Duration::from_secs(5)).unwrap();
    let body = conn
        .call("d.e", "/o", "i.f", "GetUnit", vec![Value::str("x.scope")])
        .unwrap();
    assert_eq!(body, vec![Value::ObjectPath("/u".into())]);
    let e = conn
        .call("d.e", "/o", "i.f", "Other", Vec::new())
        .unwrap_err();
    assert!(e.is_remote("org.example.Nope"), "{e}");
    assert_eq!(e.to_string(), "org.example.Nope: not this one");
    let calls = calls.lock().unwrap();
    let members: Vec<_> = calls.iter().map(|c| c.member.clone().unwrap()).collect();
    assert_eq!(members, ["Hello", "GetUnit", "Other"]);
    // Serials grow, so each reply is matched to its call.
    assert!(calls[1].serial < calls[2].serial);

    // A peer that refuses our credentials.
    let listener = std::os::unix::net::UnixListener::bind(t.path().join("strict")).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        s.write_all(b"REJECTED EXTERNAL\r\n").unwrap();
    });
    let e = Connection::open(&t.path().join("strict"), false, Duration::from_secs(5))
        .err()
        .unwrap();
    assert!(matches!(e, BusError::Auth(_)), "{e}");
    assert!(e.to_string().contains("REJECTED"), "{e}");
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let bytes = Message::call("", "/a", "i.f", "M", transient_args())
        .encode()
        .unwrap();
    for len in 0..bytes.len() {
        assert!(Message::decode(&bytes[..len]).is_err(), "prefix {len}");
    }
    for at in 0..bytes.len() {
        let mut b = bytes.clone();
        b[at] ^= 0xff;
        let _ = Message::decode(&b);
    }
    assert!(split_signature("a").is_err());
    assert!(split_signature("(").is_err());
    assert!(split_signature("{sv}").is_ok());
    assert!(split_signature("a{vs}").is_err());
    assert!(split_signature(&"a".repeat(100)).is_err());
    let e = Encoder::default()
        .put(&Value::Array("u".into(), vec![Value::str("x")]))
        .unwrap_err();
    assert!(e.to_string().contains("array of u"), "{e}");
    assert!(
        Encoder::default()
            .put(&Value::ObjectPath("a/b".into()))
            .is_err()
    );
}
