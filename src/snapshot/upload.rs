//! A multipart upload with a bounded number of parts in flight, each request under a timeout
//! (and retried by the object_store client's retry policy), aborted on any failure so that no
//! part is left behind, also when the upload is dropped unfinished (a cancelled save): the abort
//! then runs as a task of its own. An abort that fails (the store went away mid-upload) is
//! kept and tried again by [`retry_abandoned`], which the scheduler calls before each run.
//! Memory: at most `PARTS_IN_FLIGHT + 1` parts of [`PART_BYTES`].

use std::sync::Mutex;

use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutMultipartOptions};
use tokio::task::JoinSet;

use super::call::{bounded, Call, CallError};

/// Bytes of every part but the last (S3 wants at least 5 MiB).
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploading at once.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Failed aborts kept for another try; beyond this the oldest is given up (with a warning:
/// the store's own expiry of incomplete uploads is then what cleans it).
pub const MAX_ABANDONED: usize = 64;

/// Uploads whose abort failed, to abort again.
static ABANDONED: Mutex<Vec<Box<dyn MultipartUpload>>> = Mutex::new(Vec::new());

/// Keeps `upload`, whose abort failed, for [`retry_abandoned`].
fn abandon(upload: Box<dyn MultipartUpload>) {
    let mut left = ABANDONED.lock().unwrap_or_else(|e| e.into_inner());
    if left.len() >= MAX_ABANDONED {
        left.remove(0);
        tracing::warn!("too many failed aborts of snapshot uploads; giving the oldest up");
    }
    left.push(upload);
}

/// Aborts again every upload whose abort failed; returns how many are still left.
pub async fn retry_abandoned() -> usize {
    let uploads: Vec<_> = std::mem::take(&mut *ABANDONED.lock().unwrap_or_else(|e| e.into_inner()));
    for mut upload in uploads {
        match bounded(Call::AbortUpload, upload.abort()).await {
            Ok(()) => tracing::info!("an abandoned snapshot upload was aborted"),
            Err(e) => {
                tracing::warn!(error = %e, "aborting an abandoned snapshot upload failed again");
                abandon(upload);
            }
        }
    }
    ABANDONED.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// One upload in progress. Finish it with [`Upload::complete`], or [`Upload::abort`] it;
/// dropped before it completed, it is aborted in the background.
pub struct Upload {
    /// `None` once completed or aborted.
    upload: Option<Box<dyn MultipartUpload>>,
    buffer: Vec<u8>,
    parts: JoinSet<Result<(), CallError>>,
}

impl Upload {
    /// Starts a multipart upload of `path`.
    pub async fn start(store: &dyn ObjectStore, path: &Path) -> Result<Upload, CallError> {
        let options = PutMultipartOptions::default();
        let upload = bounded(Call::StartUpload, store.put_multipart_opts(path, options)).await?;
        Ok(Upload {
            upload: Some(upload),
            buffer: Vec::with_capacity(PART_BYTES),
            parts: JoinSet::new(),
        })
    }

    /// Appends bytes; waits while [`PARTS_IN_FLIGHT`] parts are uploading and a new one is full.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), CallError> {
        while !data.is_empty() {
            let take = (PART_BYTES - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == PART_BYTES {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    /// Sends what is buffered, waits for every part and completes the upload.
    pub async fn complete(&mut self) -> Result<(), CallError> {
        if !self.buffer.is_empty() {
            self.send_part().await?;
        }
        self.wait_until_at_most(0).await?;
        bounded(Call::CompleteUpload, self.open()?.complete()).await?;
        self.upload = None;
        Ok(())
    }

    /// Stops the parts in flight and aborts the upload, so the store drops every part. An
    /// abort that fails is kept to be tried again.
    pub async fn abort(mut self) -> Result<(), CallError> {
        self.parts.shutdown().await;
        let Some(mut upload) = self.upload.take() else {
            return Ok(());
        };
        let aborted = bounded(Call::AbortUpload, upload.abort()).await;
        if aborted.is_err() {
            abandon(upload);
        }
        aborted
    }

    fn open(&mut self) -> Result<&mut Box<dyn MultipartUpload>, CallError> {
        self.upload.as_mut().ok_or(CallError::Finished)
    }

    async fn send_part(&mut self) -> Result<(), CallError> {
        self.wait_until_at_most(PARTS_IN_FLIGHT - 1).await?;
        let part = std::mem::replace(&mut self.buffer, Vec::with_capacity(PART_BYTES));
        let request = self.open()?.put_part(part.into());
        self.parts.spawn(bounded(Call::UploadPart, request));
        Ok(())
    }

    async fn wait_until_at_most(&mut self, parts: usize) -> Result<(), CallError> {
        while self.parts.len() > parts {
            match self.parts.join_next().await {
                Some(Ok(result)) => result?,
                Some(Err(join)) => return Err(CallError::Task(join)),
                None => break,
            }
        }
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        self.parts.abort_all();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = bounded(Call::AbortUpload, upload.abort()).await {
                        tracing::warn!(error = %e, "aborting a dropped snapshot upload failed; it is tried again before the next snapshot");
                        abandon(upload);
                    }
                });
            }
            Err(_) => tracing::warn!("a snapshot upload dropped outside a runtime is not aborted"),
        }
    }
}
