//! A fake bus for tests: a thread on a unix socket that authenticates its clients as a bus
//! does, records every method call and answers each with what the test's closure says.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{Kind, Message, Value, read_message};

/// What the fake answers a call with: a return's body, or an error's name and message.
pub(crate) type Answer = Result<Vec<Value>, (String, String)>;

/// Serves `path` until the test ends; returns the calls received so far (`Hello`
/// included). Before every reply the fake sends a signal, which clients must skip.
pub(crate) fn serve(
    path: &Path,
    answer: impl Fn(&Message) -> Answer + Send + Sync + 'static,
) -> Arc<Mutex<Vec<Message>>> {
    let listener = UnixListener::bind(path).unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = calls.clone();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (calls, answer) = (recorded.clone(), answer.clone());
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                if handshake(&mut reader, &mut writer).is_some() {
                    converse(&mut reader, &mut writer, &calls, &*answer);
                }
            });
        }
    });
    calls
}

/// The server's side of SASL EXTERNAL; refuses a client that claims another uid.
fn handshake(reader: &mut BufReader<impl Read>, writer: &mut impl Write) -> Option<()> {
    let mut nul = [0u8; 1];
    reader.read_exact(&mut nul).ok()?;
    assert_eq!(nul, [0], "the client starts with a NUL byte");
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let uid: String = nix::unistd::geteuid()
        .as_raw()
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    if line != format!("AUTH EXTERNAL {uid}\r\n") {
        writer.write_all(b"REJECTED EXTERNAL\r\n").ok()?;
        return None;
    }
    writer
        .write_all(b"OK 0123456789abcdef0123456789abcdef\r\n")
        .ok()?;
    line.clear();
    reader.read_line(&mut line).ok()?;
    (line == "BEGIN\r\n").then_some(())
}

fn converse(
    reader: &mut impl Read,
    writer: &mut impl Write,
    calls: &Mutex<Vec<Message>>,
    answer: &(dyn Fn(&Message) -> Answer + Send + Sync),
) {
    let mut serial = 1000;
    while let Ok(buf) = read_message(reader) {
        let call = Message::decode(&buf).expect("the client sends valid messages");
        calls.lock().unwrap().push(call.clone());
        let result = if call.member.as_deref() == Some("Hello") {
            Ok(vec![Value::str(":1.42")])
        } else {
            answer(&call)
        };
        serial += 1;
        let mut signal = Message::call("", "/org/freedesktop/systemd1", "i.f", "Noise", vec![]);
        signal.kind = Kind::Signal;
        signal.serial = serial;
        signal.body = vec![Value::Array("h".into(), Vec::new())];
        serial += 1;
        let mut reply = Message::call(":1.42", "/", "", "", Vec::new());
        (reply.path, reply.interface, reply.member) = (None, None, None);
        reply.serial = serial;
        reply.reply_serial = Some(call.serial);
        match result {
            Ok(body) => {
                reply.kind = Kind::MethodReturn;
                reply.body = body;
            }
            Err((name, message)) => {
                reply.kind = Kind::Error;
                reply.error_name = Some(name);
                reply.body = vec![Value::str(message)];
            }
        }
        // `ah`: a body the client cannot decode, so it must skip the signal unread.
        let mut out = signal.encode().unwrap();
        out.extend(reply.encode().unwrap());
        if writer.write_all(&out).is_err() {
            return;
        }
    }
}
