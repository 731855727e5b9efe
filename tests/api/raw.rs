//! A client that sends request bytes as they are — malformed protobuf, invalid UTF-8, no
//! message at all — which no generated stub can make.

use bytes::{Buf, BufMut};
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Encodes bytes as they are; decodes whatever came back as bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

/// Every method of `baton.v1.Coordinator`; `StreamEvents` is the one server stream.
pub const METHODS: [&str; 16] = [
    "AcquireLease",
    "RenewLease",
    "ReleaseLease",
    "GetLease",
    "DefineMachine",
    "GetMachine",
    "CreateEntity",
    "GetEntity",
    "ListEntities",
    "Transition",
    "AppendEvents",
    "StreamEvents",
    "ListLeases",
    "ForceReleaseLease",
    "ListMachines",
    "DeleteEntity",
];

fn path(method: &str) -> PathAndQuery {
    PathAndQuery::try_from(format!("/baton.v1.Coordinator/{method}")).expect("a method path")
}

/// Calls `method` with `body` as the request message (`None`: no message at all), with a
/// deadline. A stream's answer is its first message or its status.
pub async fn call(channel: &Channel, method: &str, body: Option<Vec<u8>>, deadline: Duration) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let Some(body) = body else {
        let empty = tokio_stream::empty::<Vec<u8>>();
        return grpc
            .client_streaming(Request::new(empty), path(method), RawCodec)
            .await
            .map(drop);
    };
    let mut request = Request::new(body);
    request.set_timeout(deadline);
    if method == "StreamEvents" {
        let mut stream = grpc
            .server_streaming(request, path(method), RawCodec)
            .await?
            .into_inner();
        return stream.message().await.map(drop);
    }
    grpc.unary(request, path(method), RawCodec).await.map(drop)
}
