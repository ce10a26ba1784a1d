//! The admin API's errors: a handler that fails answers [`ApiError`], an
//! `about:blank` problem body ([`crate::problem`]) whose status says what
//! kind of failure it was (400 malformed, 404 unknown, 409 conflict, 422
//! invalid, 500 the manager's fault, logged; 503 when the store's file
//! system refuses the write, naming the storage error).

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::ca::CaError;
use crate::fleet::FleetError;
use crate::onboarding::OnboardingError;
use crate::problem::{self, Problem};
use crate::store::StoreError;

/// An API error: a status and a detail.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: String,
}

impl ApiError {
    /// An error answered with `status` and `detail`.
    pub(super) fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::UnknownClient(_) | StoreError::NotDeployed { .. } => StatusCode::NOT_FOUND,
            StoreError::NameTaken(_) | StoreError::ClientExists(_) | StoreError::Revoked(_) => {
                StatusCode::CONFLICT
            }
            StoreError::InvalidName(_) | StoreError::TooManyDeployments { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            // Full or read-only: reported once by the store; the operator retries.
            other if other.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "admin request failed in the store");
        }
        Self::new(status, e.to_string())
    }
}

impl From<CaError> for ApiError {
    fn from(e: CaError) -> Self {
        tracing::error!(error = %e, "admin request failed in the CA");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<OnboardingError> for ApiError {
    fn from(e: OnboardingError) -> Self {
        let detail = e.to_string();
        let status = match e {
            OnboardingError::Store(store) => return store.into(),
            OnboardingError::UnknownRequest(_) | OnboardingError::UnknownToken(_) => {
                StatusCode::NOT_FOUND
            }
            OnboardingError::AmbiguousRequest(_)
            | OnboardingError::InvalidToken(_)
            | OnboardingError::NoFilter => StatusCode::UNPROCESSABLE_ENTITY,
            OnboardingError::Decided { .. }
            | OnboardingError::Revoked(_)
            | OnboardingError::Rejected(_)
            | OnboardingError::NoFreeName(_)
            | OnboardingError::Token(_)
            | OnboardingError::PendingFull { .. }
            | OnboardingError::SourcePendingFull { .. } => StatusCode::CONFLICT,
            OnboardingError::Ca(_) | OnboardingError::Random => {
                tracing::error!(error = %detail, "admin onboarding request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self::new(status, detail)
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::Store(e) => e.into(),
            FleetError::Pki(e) => e.into(),
            FleetError::Onboarding(e) => e.into(),
            FleetError::Incomplete(detail) => Self::new(StatusCode::BAD_REQUEST, detail),
            FleetError::Invalid(detail) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail),
            FleetError::Task(detail) => {
                tracing::error!(error = %detail, "admin request failed in a blocking task");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("request body: {}", e.body_text()),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem::response(self.status, &Problem::blank(self.status, self.detail))
    }
}
