//! Criterion benches of the hot codecs: Engine.IO packets and polling payloads, Socket.IO events.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use herald_protocol::engineio::{self, decode_payload, encode_payload, OutFrame, Version};
use herald_protocol::socketio::{self, check_placeholders, placeholder, Event, Header, PacketType};
use serde_json::{json, Value};

/// A 100-byte Socket.IO EVENT; its keys are in the order `serde_json` writes them, so encoding yields it back.
const EVENT: &str = r#"2["chat",{"room":"general","text":"hello, world! how is everyone ok?","ts":1700000000,"user":"ana"}]"#;

/// A BINARY_EVENT whose one attachment is a placeholder.
const BINARY_EVENT: &str = r#"51-["upload",{"data":{"_placeholder":true,"num":0},"name":"a.png"}]"#;

/// The Engine.IO message carrying [`EVENT`].
fn message() -> String {
    format!("4{EVENT}")
}

/// The arguments of [`EVENT`].
fn event_args() -> [Value; 1] {
    [json!({
        "room": "general",
        "text": "hello, world! how is everyone ok?",
        "ts": 1_700_000_000u64,
        "user": "ana",
    })]
}

/// Ten Engine.IO text frames as a broadcast queues them: eight messages, a ping and a noop.
fn ten_frames() -> Vec<OutFrame> {
    let mut frames: Vec<_> = (0..8).map(|_| OutFrame::text(message())).collect();
    frames.push(OutFrame::text("2"));
    frames.push(OutFrame::text("6"));
    frames
}

fn engineio_packets(c: &mut Criterion) {
    let text = message();
    c.bench_function("engineio/text_decode", |b| {
        b.iter(|| engineio::Packet::decode_text(black_box(&text), Version::V4).unwrap())
    });
    let packet = engineio::Packet::Message(&text[1..]);
    let mut out = String::with_capacity(256);
    c.bench_function("engineio/text_encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&packet).encode_text(Version::V4, &mut out);
            black_box(out.len())
        })
    });
}

fn engineio_payloads(c: &mut Criterion) {
    let frames = ten_frames();
    for (name, version) in [("v4", Version::V4), ("v3", Version::V3)] {
        let mut body = String::new();
        encode_payload(&frames, version, &mut body);
        assert_eq!(decode_payload(&body, version).count(), 10);
        c.bench_function(&format!("engineio/payload_{name}_decode_10"), |b| {
            b.iter(|| {
                for packet in decode_payload(black_box(&body), version) {
                    black_box(packet.unwrap());
                }
            })
        });
        let mut out = String::with_capacity(2048);
        c.bench_function(&format!("engineio/payload_{name}_encode_10"), |b| {
            b.iter(|| {
                out.clear();
                encode_payload(black_box(&frames), version, &mut out);
                black_box(out.len())
            })
        });
    }

    // A batch as it leaves for a polling client: text messages and binary attachments mixed.
    let mut mixed = ten_frames();
    mixed.truncate(8);
    mixed.push(OutFrame::Binary(Bytes::from(vec![0xA5; 1024])));
    mixed.push(OutFrame::Binary(Bytes::from(vec![0x5A; 64])));
    let mut out = String::with_capacity(4096);
    c.bench_function("engineio/encode_payload_v4_8_text_2_binary", |b| {
        b.iter(|| {
            out.clear();
            encode_payload(black_box(&mixed), Version::V4, &mut out);
            black_box(out.len())
        })
    });
}

fn socketio_packets(c: &mut Criterion) {
    assert_eq!(EVENT.len(), 100);
    c.bench_function("socketio/event_decode_100b", |b| {
        b.iter(|| socketio::decode(black_box(EVENT), 10).unwrap())
    });

    let args = event_args();
    let header = Header::new(PacketType::Event, "/");
    let mut out = Vec::with_capacity(256);
    encode(&header, "chat", &args, &mut out);
    assert_eq!(out, EVENT.as_bytes());
    c.bench_function("socketio/event_encode_100b", |b| {
        b.iter(|| {
            encode(black_box(&header), "chat", black_box(&args), &mut out);
            black_box(out.len())
        })
    });

    let attachment = Bytes::from(vec![0xA5; 1024]);
    c.bench_function("socketio/binary_event_decode_1_attachment", |b| {
        b.iter(|| {
            let packet = socketio::decode(black_box(BINARY_EVENT), 10).unwrap();
            check_placeholders(packet.data.as_ref().unwrap(), packet.attachments).unwrap();
            let frame =
                engineio::Packet::decode_binary_frame(black_box(attachment.clone()), Version::V4)
                    .unwrap();
            black_box((packet, frame))
        })
    });

    let args = [json!({"data": placeholder(0), "name": "a.png"})];
    let header = Header {
        attachments: 1,
        ..Header::new(PacketType::BinaryEvent, "/")
    };
    encode(&header, "upload", &args, &mut out);
    assert_eq!(out, BINARY_EVENT.as_bytes());
    c.bench_function("socketio/binary_event_encode_1_attachment", |b| {
        b.iter(|| {
            encode(black_box(&header), "upload", black_box(&args), &mut out);
            let frames = [
                OutFrame::Text(Bytes::copy_from_slice(&out)),
                OutFrame::Binary(black_box(attachment.clone())),
            ];
            black_box(frames)
        })
    });
}

/// Replaces `out` with the packet `header` + `[name, ...args]`, written by the [`Event`] serializer.
fn encode(header: &Header<'_>, name: &str, args: &[Value], out: &mut Vec<u8>) {
    out.clear();
    socketio::encode(header, Some(&Event { name, args }), out).unwrap();
}

criterion_group!(
    benches,
    engineio_packets,
    engineio_payloads,
    socketio_packets
);
criterion_main!(benches);
