//! Database errors become API errors here and nowhere else. The mapping
//! goes by SQLSTATE, and the client-facing detail never includes the
//! database's message, constraint or table names (they can name other
//! tenants' objects or reveal the schema); the full error is logged.

use std::time::Duration;

use super::problem::{ApiError, FieldError};

/// How long clients should wait after a transient database failure.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn unavailable(detail: &str) -> ApiError {
    ApiError::Unavailable {
        detail: detail.into(),
        retry_after: Some(RETRY_AFTER),
    }
}

/// The API error for a database error (`?` uses it through `From`).
pub fn from_sqlx(error: sqlx::Error) -> ApiError {
    let mapped = match &error {
        sqlx::Error::RowNotFound => return ApiError::NotFound,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            unavailable("the database is busy or unreachable; retry later")
        }
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("23505") => {
                ApiError::Conflict("a resource with this id or name already exists".into())
            }
            Some("23503") => ApiError::Conflict(
                "the resource refers to, or is referred to by, another resource".into(),
            ),
            // Our validation should have caught these; if not, the input is
            // still the client's, so 422 rather than 500.
            // 22P05 / 22021: U+0000 (or bytes) that jsonb / text cannot hold.
            Some(
                "23502" | "23514" | "22001" | "22003" | "22P02" | "2201B" | "22023" | "22P05"
                | "22021",
            ) => ApiError::validation(vec![FieldError::new(
                "",
                "a value is out of range or not allowed",
            )]),
            Some("40001" | "40P01") => ApiError::Conflict(
                "a concurrent request changed the same data; retry the request".into(),
            ),
            Some("57014") => unavailable("the query took longer than the limit"),
            Some(code) if code.starts_with("08") || matches!(code, "53300" | "57P01" | "57P03") => {
                unavailable("the database is busy or unreachable; retry later")
            }
            _ => return ApiError::Internal(error.into()),
        },
        _ => return ApiError::Internal(error.into()),
    };
    // The internal case logs itself when rendered; the others are the
    // client's (or transient), but operators still want the cause.
    tracing::info!(status = mapped.kind().status.as_u16(), error = %error, "database error");
    mapped
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        from_sqlx(error)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::error::Error as StdError;
    use std::fmt;

    use sqlx::error::{DatabaseError, ErrorKind};

    use super::*;
    use crate::http::problem::kind;

    #[derive(Debug)]
    struct FakeDbError(&'static str);

    impl fmt::Display for FakeDbError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "relation \"tenant_b_secret\" constraint \"x_pkey\" ({})",
                self.0
            )
        }
    }

    impl StdError for FakeDbError {}

    impl DatabaseError for FakeDbError {
        fn message(&self) -> &str {
            "duplicate key value violates unique constraint \"tenant_b_secret_pkey\""
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    fn db(code: &'static str) -> ApiError {
        sqlx::Error::Database(Box::new(FakeDbError(code))).into()
    }

    #[test]
    fn sqlstates_map_to_statuses() {
        let cases = [
            ("23505", kind::CONFLICT),
            ("23503", kind::CONFLICT),
            ("23514", kind::VALIDATION_FAILED),
            ("22P02", kind::VALIDATION_FAILED),
            ("40001", kind::CONFLICT),
            ("40P01", kind::CONFLICT),
            ("57014", kind::UNAVAILABLE),
            ("53300", kind::UNAVAILABLE),
            ("08006", kind::UNAVAILABLE),
            ("42501", kind::INTERNAL),
            ("XX000", kind::INTERNAL),
        ];
        for (code, want) in cases {
            let error = db(code);
            assert_eq!(error.kind(), want, "{code}");
            let text = serde_json::to_string(&error.to_problem()).expect("json");
            assert!(!text.contains("tenant_b"), "{code} leaks: {text}");
            assert!(!text.contains("pkey"), "{code} leaks: {text}");
        }
    }

    #[test]
    fn other_sqlx_errors() {
        assert!(matches!(
            ApiError::from(sqlx::Error::RowNotFound),
            ApiError::NotFound
        ));
        let busy = ApiError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(busy.kind(), kind::UNAVAILABLE);
        assert!(matches!(
            busy,
            ApiError::Unavailable {
                retry_after: Some(_),
                ..
            }
        ));
        let decode = ApiError::from(sqlx::Error::ColumnNotFound("secret_column".into()));
        assert_eq!(decode.kind(), kind::INTERNAL);
        assert!(
            !serde_json::to_string(&decode.to_problem())
                .expect("json")
                .contains("secret_column")
        );
    }
}
