//! Every exceeded limit answers RESOURCE_EXHAUSTED (design §5), the message size limit too.
//! tonic refuses a request message over a service's `max_decoding_message_size` with
//! OUT_OF_RANGE ("... message length too large: found N bytes, the limit is: M bytes"); this
//! layer, around every service of the process, turns that status into RESOURCE_EXHAUSTED with
//! the same message, so the limit stays named.
//!
//! It rewrites statuses of trailers-only responses: a unary request over the limit, and a
//! client stream whose handler ends on an oversized later message (`stream.message().await?`
//! returns the status and the handler returns it before answering). A call that already sent
//! its response headers (a server or bidirectional stream) ends with its status in the
//! trailers, which pass unchanged.

use aether_proto::transport::oversize_in_headers_is_resource_exhausted;
use tonic::body::Body;
use tower::util::MapResponseLayer;

/// What the layer does to each response.
pub type Rewrite = fn(http::Response<Body>) -> http::Response<Body>;

/// The layer; put it inside the telemetry layer so metrics count the rewritten status.
pub fn layer() -> MapResponseLayer<Rewrite> {
    MapResponseLayer::new(rewrite)
}

fn rewrite(mut response: http::Response<Body>) -> http::Response<Body> {
    oversize_in_headers_is_resource_exhausted(response.headers_mut(), None);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    fn status_of(response: &http::Response<Body>) -> Status {
        Status::from_header_map(response.headers()).expect("a trailers-only response")
    }

    #[test]
    fn oversized_messages_are_resource_exhausted_with_the_limit() {
        let message = "Error, decoded message length too large: found 9437199 bytes, the limit is: 8388608 bytes";
        let response = rewrite(Status::out_of_range(message).into_http());
        let status = status_of(&response);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), message);
    }

    #[test]
    fn other_statuses_pass_unchanged() {
        // The bus answers OUT_OF_RANGE for offsets past the end of a stream: not a size limit.
        let offset = Status::out_of_range("offset 9 is out of range: the stream holds 0 to 3");
        let response = rewrite(offset.clone().into_http());
        let status = status_of(&response);
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(status.message(), offset.message());
        let response = rewrite(Status::not_found("no such session").into_http());
        assert_eq!(status_of(&response).code(), Code::NotFound);
        // A response that answered has no status in its headers.
        let response = rewrite(http::Response::new(Body::empty()));
        assert!(Status::from_header_map(response.headers()).is_none());
    }
}
