//! A multipart upload with a bounded number of parts in flight, each request under a timeout
//! (and retried by the object_store client's retry policy), aborted on any failure so that no
//! part is left behind, also when the upload is dropped unfinished (a cancelled save): the abort
//! then runs as a task of its own. Memory: at most `PARTS_IN_FLIGHT + 1` parts of [`PART_BYTES`].

use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutMultipartOptions};
use tokio::task::JoinSet;

use super::call::{bounded, Call, CallError};

/// Bytes of every part but the last (S3 wants at least 5 MiB).
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploading at once.
pub const PARTS_IN_FLIGHT: usize = 2;

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

    /// Stops the parts in flight and aborts the upload, so the store drops every part.
    pub async fn abort(mut self) -> Result<(), CallError> {
        self.parts.shutdown().await;
        match self.upload.take() {
            Some(mut upload) => bounded(Call::AbortUpload, upload.abort()).await,
            None => Ok(()),
        }
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
                        tracing::warn!(error = %e, "aborting a dropped snapshot upload failed");
                    }
                });
            }
            Err(_) => tracing::warn!("a snapshot upload dropped outside a runtime is not aborted"),
        }
    }
}
