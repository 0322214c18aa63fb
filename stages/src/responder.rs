//! Sending the response back to the client on the protocol it came in on.

use std::time::Duration;

use bytes::Bytes;
use h3::error::Code;
use http::{HeaderMap, HeaderValue, Response};

use crate::body::BoxError;
use crate::flow::Reply;

type H3Send = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// How long a proxy-made response may take to write before the stream is reset.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    HeadSent,
    Finished,
}

/// The client side of an exchange's response.
pub struct Responder {
    stream: Option<H3Send>,
    state: State,
}

impl Responder {
    pub(crate) fn h3(stream: H3Send) -> Self {
        Responder {
            stream: Some(stream),
            state: State::Fresh,
        }
    }

    /// A responder that sends nowhere (benchmarks, unit tests).
    pub fn detached() -> Self {
        Responder {
            stream: None,
            state: State::Fresh,
        }
    }

    /// Whether the response head went out.
    pub fn head_sent(&self) -> bool {
        self.state != State::Fresh
    }

    pub async fn send_head(&mut self, resp: Response<()>) -> Result<(), BoxError> {
        self.state = State::HeadSent;
        match self.stream.as_mut() {
            Some(s) => Ok(s.send_response(resp).await?),
            None => Ok(()),
        }
    }

    pub async fn send_data(&mut self, data: Bytes) -> Result<(), BoxError> {
        match self.stream.as_mut() {
            Some(s) => Ok(s.send_data(data).await?),
            None => Ok(()),
        }
    }

    /// Sends trailers and ends the stream.
    pub async fn send_trailers(&mut self, trailers: HeaderMap) -> Result<(), BoxError> {
        if let Some(s) = self.stream.as_mut() {
            s.send_trailers(trailers).await?;
            // h3 0.0.8: send_trailers does not finish the stream.
            s.finish().await?;
        }
        self.state = State::Finished;
        Ok(())
    }

    /// Ends the stream after the body.
    pub async fn finish(&mut self) -> Result<(), BoxError> {
        if let Some(s) = self.stream.as_mut() {
            s.finish().await?;
        }
        self.state = State::Finished;
        Ok(())
    }

    /// Writes a whole proxy-made response, bounded in time.
    pub async fn reply(&mut self, reply: Reply) -> Result<(), BoxError> {
        let write = async {
            let mut resp = Response::new(());
            *resp.status_mut() = reply.status;
            *resp.headers_mut() = reply.headers;
            if !resp.headers().contains_key(http::header::CONTENT_LENGTH) {
                resp.headers_mut().insert(
                    http::header::CONTENT_LENGTH,
                    HeaderValue::from(reply.body.len()),
                );
            }
            self.send_head(resp).await?;
            if !reply.body.is_empty() {
                self.send_data(reply.body).await?;
            }
            self.finish().await
        };
        match tokio::time::timeout(REPLY_WRITE_TIMEOUT, write).await {
            Ok(r) => r,
            Err(_) => Err("timed out writing the response".into()),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(s) = self.stream.as_mut() {
            match self.state {
                State::Finished => {}
                // RFC 9114 §4.1.1: an abandoned request is cancelled by resetting the stream.
                State::Fresh => s.stop_stream(Code::H3_REQUEST_CANCELLED),
                // The response was cut short: the client must not take it as complete.
                State::HeadSent => s.stop_stream(Code::H3_INTERNAL_ERROR),
            }
        }
    }
}
