//! The outcome of an exec or attach as the error stream reports it: a `metav1.Status` as JSON
//! (protocol v4 and later), or the bare failure message (earlier protocols).

use serde::{Deserialize, Serialize};

/// `reason` of a process that exited with a non-zero code.
pub const REASON_NON_ZERO_EXIT: &str = "NonZeroExitCode";
/// `details.causes[].reason` carrying the exit code in `message`.
pub const CAUSE_EXIT_CODE: &str = "ExitCode";

/// The fields of `metav1.Status` that streaming uses, serialized in Go's field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ApiStatus {
    /// Always `{}`.
    #[serde(default)]
    pub metadata: Empty,
    /// `Success` or `Failure`.
    #[serde(default)]
    pub status: String,
    /// Human-readable description of a failure.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Machine-readable reason of a failure.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Causes, such as the exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
    /// HTTP-style code of an internal error.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub code: i32,
}

/// `metav1.ListMeta`, always empty here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Empty {}

/// `metav1.StatusDetails`, reduced to its causes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Details {
    /// The causes.
    #[serde(default)]
    pub causes: Vec<Cause>,
}

/// `metav1.StatusCause`; its Go field `Type` is `reason` in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Cause {
    /// The cause type, such as `ExitCode`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Its value or description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl ApiStatus {
    /// The command finished with exit code 0 (or the attach ended).
    pub fn success() -> ApiStatus {
        ApiStatus {
            status: "Success".into(),
            ..Default::default()
        }
    }

    /// The command `cmd` exited with `code` (non-zero).
    pub fn exit_code(cmd: &[String], code: i32) -> ApiStatus {
        ApiStatus {
            status: "Failure".into(),
            message: format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                cmd.join(" ")
            ),
            reason: REASON_NON_ZERO_EXIT.into(),
            details: Some(Details {
                causes: vec![Cause {
                    reason: CAUSE_EXIT_CODE.into(),
                    message: code.to_string(),
                }],
            }),
            ..Default::default()
        }
    }

    /// The runtime failed to run or attach (`apierrors.NewInternalError`).
    pub fn internal_error(err: &str) -> ApiStatus {
        ApiStatus {
            status: "Failure".into(),
            message: format!("Internal error occurred: {err}"),
            reason: "InternalError".into(),
            details: Some(Details {
                causes: vec![Cause {
                    reason: String::new(),
                    message: err.into(),
                }],
            }),
            code: 500,
            ..Default::default()
        }
    }

    /// Whether this is a success.
    pub fn is_success(&self) -> bool {
        self.status == "Success"
    }

    /// The exit code a failure carries, if it is a non-zero exit.
    pub fn exit_code_value(&self) -> Option<i32> {
        if self.reason != REASON_NON_ZERO_EXIT {
            return None;
        }
        self.details
            .as_ref()?
            .causes
            .iter()
            .find(|c| c.reason == CAUSE_EXIT_CODE)?
            .message
            .parse()
            .ok()
    }

    /// The bytes the error stream carries under protocol v4 and later.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The bytes the error stream carries before v4: nothing on success, else the message.
    pub fn to_v1_text(&self) -> Vec<u8> {
        if self.is_success() {
            Vec::new()
        } else {
            self.message.clone().into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_matches_what_kubelet_writes() {
        assert_eq!(
            String::from_utf8(ApiStatus::success().to_json()).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let cmd = vec!["sh".to_string(), "-c".into(), "exit 3".into()];
        assert_eq!(
            String::from_utf8(ApiStatus::exit_code(&cmd, 3).to_json()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(
            String::from_utf8(ApiStatus::internal_error("boom").to_json()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: boom","reason":"InternalError","details":{"causes":[{"message":"boom"}]},"code":500}"#
        );
    }

    #[test]
    fn parsing_recovers_the_exit_code() {
        let status: ApiStatus =
            serde_json::from_slice(&ApiStatus::exit_code(&["false".into()], 1).to_json()).unwrap();
        assert_eq!(status.exit_code_value(), Some(1));
        assert_eq!(ApiStatus::success().exit_code_value(), None);
        assert!(ApiStatus::success().to_v1_text().is_empty());
        assert!(
            String::from_utf8(ApiStatus::exit_code(&["x".into()], 2).to_v1_text())
                .unwrap()
                .contains("exit code 2")
        );
    }
}
