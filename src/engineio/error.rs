//! Engine.IO request errors and their HTTP answers.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;

/// Why an Engine.IO HTTP request was refused. [`EngineError::code`] is the protocol's error
/// code, sent as JSON `{"code":N,"message":"..."}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// Code 0: the `transport` is missing, unknown or disabled.
    #[error("Transport unknown")]
    UnknownTransport,
    /// Code 1: no session with that sid.
    #[error("Session ID unknown")]
    UnknownSid,
    /// Code 2: a handshake that is not a GET.
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    /// Code 3: a request that breaks a protocol rule.
    #[error("Bad request")]
    BadRequest,
    /// Code 4: the `Origin` is not allowed (HTTP 403).
    #[error("Forbidden")]
    Forbidden,
    /// Code 5: `EIO` is missing or not 4.
    #[error("Unsupported protocol version")]
    UnsupportedProtocolVersion,
    /// A polling POST larger than `max_payload` (HTTP 413, code 3).
    #[error("Payload too large")]
    PayloadTooLarge,
    /// The server holds `max_sessions` already (HTTP 503, code 3).
    #[error("Too many sessions")]
    TooManySessions,
    /// This client holds `max_sessions_per_client` already (HTTP 429, code 3).
    #[error("Too many sessions from this client")]
    TooManyFromClient,
    /// The server is draining for a shutdown and takes no new session (HTTP 503, code 3).
    #[error("Server shutting down")]
    ShuttingDown,
}

impl EngineError {
    /// The protocol's numeric error code.
    pub fn code(self) -> u8 {
        match self {
            EngineError::UnknownTransport => 0,
            EngineError::UnknownSid => 1,
            EngineError::BadHandshakeMethod => 2,
            EngineError::BadRequest
            | EngineError::PayloadTooLarge
            | EngineError::TooManySessions
            | EngineError::TooManyFromClient
            | EngineError::ShuttingDown => 3,
            EngineError::Forbidden => 4,
            EngineError::UnsupportedProtocolVersion => 5,
        }
    }

    /// The HTTP status the error is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            EngineError::Forbidden => StatusCode::FORBIDDEN,
            EngineError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            EngineError::TooManyFromClient => StatusCode::TOO_MANY_REQUESTS,
            EngineError::TooManySessions | EngineError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The HTTP answer: the status, and the JSON body.
    pub fn response(self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status());
        if matches!(
            self.status(),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response.insert_header(("Retry-After", "1"));
        }
        response.json(serde_json::json!({ "code": self.code(), "message": self.to_string() }))
    }
}
