//! Log capture: every tracing line of the test process, to search for secrets a test used
//! (nextest runs one test per process).

use std::sync::{Arc, Mutex, OnceLock};

/// Every tracing line of this test process (nextest runs one test per process).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }

    /// Asserts no log line contains any of `secrets`.
    pub fn assert_free_of(&self, secrets: &[&str]) {
        let text = self.text();
        assert!(!text.is_empty(), "no log lines were captured");
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            for line in text.lines() {
                assert!(
                    !line.contains(secret),
                    "a log line leaks a credential: {line}"
                );
            }
        }
    }
}

/// Installs (once per process) a subscriber that writes every level to a buffer.
pub fn capture_logs() -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        if tracing::subscriber::set_global_default(subscriber).is_err() {
            eprintln!("warning: a tracing subscriber was already installed; logs not captured");
        }
        logs
    })
    .clone()
}
