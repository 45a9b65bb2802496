//! The outbound sidecar's own replies to a local client, when the upstream cannot answer or
//! the request cannot go: a plain-text body naming why, or for gRPC a trailers-only status.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use super::http::ResponseBody;

pub(super) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(super) const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// gRPC status code `UNAVAILABLE`.
pub(super) const GRPC_UNAVAILABLE: HeaderValue = HeaderValue::from_static("14");
/// gRPC status code `DEADLINE_EXCEEDED` (no response within the route's `response_timeout`).
pub(super) const GRPC_DEADLINE_EXCEEDED: HeaderValue = HeaderValue::from_static("4");
/// gRPC status code `RESOURCE_EXHAUSTED` (too many request headers).
pub(super) const GRPC_RESOURCE_EXHAUSTED: HeaderValue = HeaderValue::from_static("8");

/// Whether the request is a gRPC call (its content type).
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// A response made by the sidecar. gRPC clients get HTTP 200 with `grpc-status: 14`
/// (`UNAVAILABLE`; `8`, `RESOURCE_EXHAUSTED`, for too many headers; a `response_timeout` reply
/// sets `4`, see `HttpProxy::no_response_within`) and the message in
/// `grpc-message`, as gRPC requires; others get `status` and the message as a plain-text body.
pub(super) fn local_reply(
    status: StatusCode,
    grpc: bool,
    message: String,
) -> (Response<ResponseBody>, StatusCode) {
    let mut response = if grpc {
        let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        let code = match status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => GRPC_RESOURCE_EXHAUSTED,
            _ => GRPC_UNAVAILABLE,
        };
        headers.insert(GRPC_STATUS, code);
        if let Ok(value) = HeaderValue::from_str(&grpc_percent_encode(&message)) {
            headers.insert(GRPC_MESSAGE, value);
        }
        response
    } else {
        let mut body = message;
        body.push('\n');
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    response.headers_mut().insert(
        HeaderName::from_static("x-warden-outbound-status"),
        HeaderValue::from(status.as_u16()),
    );
    (response, status)
}

/// `grpc-message` encoding: printable ASCII except `%` as is, everything else `%XX`.
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(
            grpc_percent_encode("upstream `a` 100% down\né"),
            "upstream `a` 100%25 down%0A%C3%A9"
        );
    }

    #[test]
    fn grpc_requests_get_a_trailers_only_unavailable_reply() {
        let (response, status) = local_reply(StatusCode::BAD_GATEWAY, true, "no way".to_owned());
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[GRPC_STATUS], "14");
        assert_eq!(response.headers()[GRPC_MESSAGE], "no way");
        assert_eq!(response.headers()["x-warden-outbound-status"], "502");
        let (response, _) = local_reply(StatusCode::GATEWAY_TIMEOUT, false, "slow".to_owned());
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(response.headers().get(GRPC_STATUS).is_none());
    }
}
