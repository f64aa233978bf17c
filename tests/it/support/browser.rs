//! A real browser for the dashboard's tests: Debian's headless chromium driven through
//! chromedriver (WebDriver, with fantoccini), on loopback only, with a fresh profile that
//! is removed with it. Screenshots go to `target/test-artifacts/<test>/`; axe-core (its path
//! in `DROVER_TEST_AXE`, fetched by scripts/test) checks each page's accessibility.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::process::Command;

use super::net::free_port;
use super::process::Process;
use super::Unavailable;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long a page may take to show what a test waits for.
pub const SHOW: Duration = Duration::from_secs(120);

pub struct Browser {
    pub client: Client,
    _driver: Process,
    _profile: tempfile::TempDir,
    artifacts: PathBuf,
    axe: String,
}

impl Browser {
    /// Starts chromedriver and a headless chromium session; `test` names the artifacts'
    /// directory.
    pub async fn start(test: &str) -> Result<Browser, Unavailable> {
        for path in [CHROMEDRIVER, CHROMIUM] {
            if !std::path::Path::new(path).exists() {
                return Err(Unavailable::new("chromium", format!("{path} is missing")));
            }
        }
        let axe_path = std::env::var("DROVER_TEST_AXE")
            .map_err(|_| Unavailable::new("axe-core", "DROVER_TEST_AXE is not set"))?;
        let axe = std::fs::read_to_string(&axe_path)
            .map_err(|e| Unavailable::new("axe-core", format!("{axe_path}: {e}")))?;
        // chromedriver listens on localhost only; it has no option to choose the address.
        let port = free_port(Ipv4Addr::LOCALHOST);
        let mut command = Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let driver = Process::spawn("chromedriver", &mut command)?;
        let profile = tempfile::tempdir().expect("a profile directory");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-extensions".into(),
            "--disable-default-apps".into(),
            "--disable-client-side-phishing-detection".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.*".into(),
            // The daemon's certificate is from its own CA, which this profile does not trust.
            "--ignore-certificate-errors".into(),
            "--window-size=1280,1000".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let capabilities = match capabilities {
            Value::Object(map) => map,
            _ => unreachable!("an object"),
        };
        let url = format!("http://127.0.0.1:{port}");
        let client = super::wait::poll_until(Duration::from_secs(30), || async {
            ClientBuilder::rustls()
                .map_err(|e| e.to_string())?
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| {
            Unavailable::new(
                "chromium",
                format!("no WebDriver session: {:?}", e.last_error),
            )
        })?;
        let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/test-artifacts")
            .join(test.replace("::", "-"));
        std::fs::create_dir_all(&artifacts).expect("the artifacts directory");
        Ok(Browser {
            client,
            _driver: driver,
            _profile: profile,
            artifacts,
            axe,
        })
    }

    /// Saves a screenshot of the page as `<name>.png` among the test's artifacts.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(self.artifacts.join(format!("{name}.png")), png).expect("saved");
    }

    /// Clicks the first element `css` selects.
    pub async fn click(&self, css: &str) {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// The text of the first element `css` selects, or an error saying it is not there.
    pub async fn text(&self, css: &str) -> Result<String, String> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .map_err(|e| format!("{css}: {e}"))?;
        element.text().await.map_err(|e| e.to_string())
    }

    /// Waits until `check` accepts the text of `css`; returns that text.
    pub async fn await_text(&self, what: &str, css: &str, check: impl Fn(&str) -> bool) -> String {
        let outcome = super::wait::poll_until(SHOW, || async {
            let text = self.text(css).await?;
            match check(&text) {
                true => Ok(text),
                false => Err(format!("{css}: {text}")),
            }
        })
        .await;
        match outcome {
            Ok(text) => text,
            Err(e) => {
                self.screenshot(&format!("timeout-{}", what.replace(' ', "-")))
                    .await;
                panic!("timed out waiting for {what}: {:?}", e.last_error)
            }
        }
    }

    /// The serious and critical accessibility violations axe-core finds on the page.
    pub async fn accessibility_violations(&self) -> Vec<String> {
        self.client
            .execute(&self.axe, vec![])
            .await
            .expect("axe-core loads");
        let script = "const done = arguments[arguments.length - 1];
            axe.run(document, { resultTypes: ['violations'] })
              .then(r => done(r.violations
                .filter(v => v.impact === 'serious' || v.impact === 'critical')
                .map(v => v.id + ': ' + v.help + ' (' + v.nodes.map(n => n.target.join(' ')).join(', ') + ')')))
              .catch(e => done(['axe failed: ' + e]));";
        let found = self
            .client
            .execute_async(script, vec![])
            .await
            .expect("axe-core runs");
        serde_json::from_value(found).expect("a list of violations")
    }
}
