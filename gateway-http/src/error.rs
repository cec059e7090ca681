//! One error type for the gateway; each error knows whose fault it is, and one place
//! (`impl IntoResponse`, in the HTTP layer) maps it to a status and EG's `{"reason","message"}` body.

/// Whose fault an error is; decides the HTTP status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong (4xx).
    Client,
    /// The kernel or its launch failed (5xx, with the real reason).
    Kernel,
    /// Capacity or a resource manager refused (503, or EG's 403 for limits).
    Capacity,
    /// A bug or an unexpected failure inside the gateway (500).
    Internal,
}

/// Gateway errors. Messages are lowercase, with no trailing period, and never echo secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 400: malformed JSON, bad env values, malformed KERNEL_ID.
    #[error("{message}")]
    BadRequest {
        /// Text for the `message` field.
        message: String,
    },
    /// 401, with why (empty for Enterprise Gateway's shared token, which says nothing).
    #[error("unauthorized")]
    Unauthorized(String),
    /// 403 with EG's reason text (limits, user authorization, listing disabled).
    #[error("{reason}")]
    Forbidden {
        /// Text for the `reason` field.
        reason: String,
        /// Text for the `message` field (EG often leaves it empty).
        message: String,
    },
    /// 404 `Kernel does not exist: <id>`.
    #[error("Kernel does not exist: {0}")]
    NoSuchKernel(String),
    /// 404 for an unknown kernelspec.
    #[error("No such kernel named {0}")]
    NoSuchKernelSpec(String),
    /// 404 for anything else that does not exist (resource files, sessions, routes).
    #[error("{0}")]
    NotFound(String),
    /// 409: a kernel with this id already exists.
    #[error("Kernel already exists: {0}")]
    KernelExists(String),
    /// The kernel failed to start, with the real reason (500, or 503 when capacity is the cause).
    #[error("{reason}")]
    LaunchFailed {
        /// Text for `reason` (EG puts process-proxy errors there).
        reason: String,
        /// Whose fault.
        fault: Fault,
    },
    /// The kernelspec names a backend this gateway cannot run.
    #[error("{0}")]
    Unsupported(String),
    /// Anything unexpected (500).
    #[error("{0}")]
    Internal(String),
    /// 405: the route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: the request body is larger than the API accepts.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 408: the request head or body did not arrive in time (the text says which).
    #[error("{0}")]
    RequestTimeout(String),
    /// 431: the request line and headers are larger than the gateway accepts.
    #[error("request line and headers too large")]
    HeaderFieldsTooLarge,
    /// 503: this client address already holds as many connections as it may.
    #[error("too many connections from this address")]
    TooManyConnections,
    /// 503: the gateway holds as many connections as it may in all.
    #[error("the gateway holds as many connections as it can; try again later")]
    GatewayBusy,
}

impl Error {
    /// Whose fault this is.
    pub fn fault(&self) -> Fault {
        match self {
            Error::BadRequest { .. }
            | Error::Unauthorized(_)
            | Error::Forbidden { .. }
            | Error::NoSuchKernel(_)
            | Error::NoSuchKernelSpec(_)
            | Error::NotFound(_)
            | Error::KernelExists(_)
            | Error::MethodNotAllowed
            | Error::PayloadTooLarge
            | Error::RequestTimeout(_)
            | Error::HeaderFieldsTooLarge => Fault::Client,
            Error::TooManyConnections | Error::GatewayBusy => Fault::Capacity,
            Error::LaunchFailed { fault, .. } => *fault,
            Error::Unsupported(_) => Fault::Kernel,
            Error::Internal(_) => Fault::Internal,
        }
    }
}

// === HTTP mapping: the one place an error becomes a status and a body ===

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::NoSuchKernel(_) | Error::NoSuchKernelSpec(_) | Error::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Error::KernelExists(_) => StatusCode::CONFLICT,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::HeaderFieldsTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::TooManyConnections | Error::GatewayBusy => StatusCode::SERVICE_UNAVAILABLE,
            Error::LaunchFailed {
                fault: Fault::Capacity,
                ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            Error::LaunchFailed { .. } | Error::Unsupported(_) | Error::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// EG's `reason` and `message` fields. Launch and backend failures carry their text in
    /// `reason` with an empty `message`, as EG's process proxies do; everything else uses the
    /// standard phrase of the status as `reason`.
    pub fn reason_and_message(&self) -> (String, String) {
        let phrase = || {
            self.status()
                .canonical_reason()
                .unwrap_or("Error")
                .to_owned()
        };
        match self {
            Error::Forbidden { reason, message } => (reason.clone(), message.clone()),
            Error::LaunchFailed { reason, .. } => (reason.clone(), String::new()),
            Error::Unsupported(reason) => (reason.clone(), String::new()),
            Error::MethodNotAllowed => (phrase(), String::new()),
            Error::Unauthorized(message) => (phrase(), message.clone()),
            Error::BadRequest { message }
            | Error::NotFound(message)
            | Error::Internal(message)
            | Error::RequestTimeout(message) => (phrase(), message.clone()),
            Error::NoSuchKernel(_)
            | Error::NoSuchKernelSpec(_)
            | Error::KernelExists(_)
            | Error::PayloadTooLarge
            | Error::HeaderFieldsTooLarge
            | Error::TooManyConnections
            | Error::GatewayBusy => (phrase(), self.to_string()),
        }
    }
}

impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        let status = self.status();
        // Handlers log kernel and capacity failures with their context (user, kernel) and the
        // access log has every status, so only internal errors are logged here above debug.
        match self.fault() {
            Fault::Client => {
                tracing::debug!(status = status.as_u16(), error = %self, "request refused")
            }
            Fault::Kernel | Fault::Capacity => {
                tracing::debug!(status = status.as_u16(), error = %self, "request failed")
            }
            Fault::Internal => {
                tracing::error!(status = status.as_u16(), error = %self, "request failed")
            }
        }
        let (reason, message) = self.reason_and_message();
        let body = serde_json::json!({ "reason": reason, "message": message });
        (status, axum::Json(body)).into_response()
    }
}
