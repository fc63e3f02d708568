//! OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}` with the HTTP
//! status that says whose fault it was, and the mapping from engine errors to statuses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use iris_engine::scheduler::SubmitError;
use iris_engine::EngineError;
use iris_models::ModelError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), param: None, code: None, retry_after_s: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 400 naming the offending field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self { param: Some(param.to_string()), ..Self::bad_request(format!("{param}: {}", message.into())) }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// OpenAI's `type` for the status.
    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "service_unavailable",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::TooLarge(_) | EngineError::Model(ModelError::TooLarge { .. }) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, message).with_code("media_too_large"),
            EngineError::File { .. } => Self::bad_request(message).with_code("invalid_media"),
            EngineError::Model(ModelError::Media { .. }) => Self::bad_request(message).with_code("invalid_media"),
            EngineError::Limit(_) => Self::bad_request(message).with_code("limit_exceeded"),
            EngineError::Request(_) | EngineError::Template(_) | EngineError::Tokenizer(_) => Self::bad_request(message),
            EngineError::Model(ModelError::Prompt(_) | ModelError::Unsupported(_)) => Self::bad_request(message),
            other => Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull { .. } => Self { retry_after_s: Some(1), ..Self::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()).with_code("queue_full") },
            SubmitError::TooLarge(m) => Self::bad_request(m).with_code("context_length_exceeded"),
            SubmitError::Stopped => Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}
