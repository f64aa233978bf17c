//! Every request drover makes to a snapshot store goes through [`bounded`]: a timeout of its own
//! on top of the S3 client's, so a hung store (or a stuck local disk) fails the call with a
//! typed error naming what hung.

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// Longest one store request may take: a part of `PART_BYTES` at a few hundred KB/s.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Which request, for errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Head,
    StartUpload,
    UploadPart,
    CompleteUpload,
    AbortUpload,
    PutManifest,
    GetManifest,
    ReadManifest,
    GetData,
    ReadData,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::Head => "look an object up",
            Call::StartUpload => "start a multipart upload",
            Call::UploadPart => "upload a part",
            Call::CompleteUpload => "complete a multipart upload",
            Call::AbortUpload => "abort a multipart upload",
            Call::PutManifest => "write a manifest",
            Call::GetManifest => "get a manifest",
            Call::ReadManifest => "read a manifest's bytes",
            Call::GetData => "get a snapshot's data",
            Call::ReadData => "read a snapshot's data",
        })
    }
}

/// A store request that failed or hung.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the store could not {call}")]
    Failed {
        call: Call,
        #[source]
        source: object_store::Error,
    },
    #[error("the store did not {call} within {}", humantime::format_duration(*.limit))]
    TimedOut { call: Call, limit: Duration },
    #[error("the task uploading a part ended abnormally")]
    Task(#[source] tokio::task::JoinError),
    #[error("the upload is already completed or aborted")]
    Finished,
}

impl CallError {
    /// The store's own error, when it answered.
    pub fn store_error(&self) -> Option<&object_store::Error> {
        match self {
            CallError::Failed { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Runs one store request within [`CALL_TIMEOUT`].
pub async fn bounded<T>(
    call: Call,
    request: impl Future<Output = object_store::Result<T>>,
) -> Result<T, CallError> {
    within(call, CALL_TIMEOUT, request).await
}

/// Runs one store request within `limit`.
pub async fn within<T>(
    call: Call,
    limit: Duration,
    request: impl Future<Output = object_store::Result<T>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(CallError::Failed { call, source }),
        Err(_) => Err(CallError::TimedOut { call, limit }),
    }
}
