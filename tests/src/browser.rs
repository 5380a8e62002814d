//! A real headless Chromium (Debian's `chromium` and `chromium-driver`, nothing downloaded at run
//! time) driven over `WebDriver`, inside a sandbox's peer network namespace, where `cordon serve`
//! listens: chromedriver runs there, and the test's thread joins that namespace while it drives
//! the browser, so nothing of it reaches the machine's own network.

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::{spawn_reading, Sandbox};

/// Chromium's flags: headless, and none of its calls home (this network refuses them).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
];

/// chromedriver on a sandbox's peer, killed on drop, with a profile directory of its own.
pub struct Chromium {
    driver: Child,
    port: u16,
    peer_ns: String,
    profile: PathBuf,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Chromium {
    /// Starts chromedriver in `sandbox`'s peer namespace; fails loudly when Chromium or
    /// chromedriver are missing (ops/install-toolchain.sh installs them).
    pub fn start_on_peer(sandbox: &Sandbox) -> Chromium {
        for binary in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: the console tests need Debian's chromium and chromium-driver (ops/install-toolchain.sh)"
            );
        }
        let port = 9515;
        let driver = sandbox.on_peer(Path::new("/usr/bin/chromedriver"), &[&format!("--port={port}")]);
        let (driver, mut output) = spawn_reading(driver);
        let started = output.expect_line("chromedriver to start", Duration::from_secs(15));
        let mut said = started.clone();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !said.contains("started successfully") {
            assert!(Instant::now() < deadline, "chromedriver did not start: {started}");
            said = output.expect_line("chromedriver to start", Duration::from_secs(15));
        }
        output.echo("chromedriver".into());
        let profile = sandbox.state_dir.with_extension("chromium");
        Chromium { driver, port, peer_ns: sandbox.peer_ns.clone(), profile }
    }

    /// Runs `body` with a new browser session, this thread inside the peer's network namespace
    /// meanwhile (so `http://127.0.0.1:8700` is the service); the session ends after it, and the
    /// thread goes back to its namespace, whatever happened.
    pub fn session<T>(&self, body: impl AsyncFnOnce(&Client) -> T) -> T {
        let _inside = NetworkNamespace::enter(&self.peer_ns);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the WebDriver client");
        runtime.block_on(async {
            let client = self.connect().await;
            let outcome = body(&client).await;
            let _ = client.close().await;
            outcome
        })
    }

    async fn connect(&self) -> Client {
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|flag| (*flag).to_owned()).collect();
        args.push(format!("--user-data-dir={}", self.profile.display()));
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
        });
        let serde_json::Value::Object(capabilities) = capabilities else { unreachable!("an object") };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session with chromedriver")
    }
}

/// The calling thread (only it) inside another network namespace until this is dropped.
struct NetworkNamespace {
    own: std::fs::File,
}

impl NetworkNamespace {
    /// Enters the namespace `name` (`ip netns add NAME`).
    fn enter(name: &str) -> NetworkNamespace {
        let own = std::fs::File::open("/proc/thread-self/ns/net").expect("open this thread's network namespace");
        let target = std::fs::File::open(format!("/run/netns/{name}")).expect("open the sandbox's network namespace");
        // SAFETY: setns on a file descriptor we own; it changes only this thread's namespace.
        let entered = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0, "setns into {name}: {}", std::io::Error::last_os_error());
        NetworkNamespace { own }
    }
}

impl Drop for NetworkNamespace {
    fn drop(&mut self) {
        // SAFETY: as in `enter`: back to the namespace this thread had.
        let back = unsafe { libc::setns(self.own.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(back, 0, "setns back: {}", std::io::Error::last_os_error());
    }
}

/// Helpers over a `WebDriver` session that read as what an operator does.
pub struct Page<'a> {
    pub client: &'a Client,
    /// Where screenshots go (`docs/console/` of this checkout).
    pub shots: PathBuf,
}

impl Page<'_> {
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("find {css}: {e}"));
        field.clear().await.unwrap_or_else(|e| panic!("clear {css}: {e}"));
        field.send_keys(text).await.unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Clicks what `css` selects and waits for the page it leads to (a form's answer).
    pub async fn click(&self, css: &str) {
        let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("find {css}: {e}"));
        self.run("window.cordonLeaving = true; return null").await;
        element.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let arrived = self
                .client
                .execute("return window.cordonLeaving === undefined && document.readyState === 'complete'", Vec::new())
                .await
                .unwrap_or_default();
            if arrived == serde_json::Value::Bool(true) {
                return;
            }
            assert!(Instant::now() < deadline, "clicking {css} led to no new page within 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The visible text of the first element `css` selects.
    pub async fn text(&self, css: &str) -> String {
        let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("find {css}: {e}"));
        element.text().await.unwrap_or_else(|e| panic!("text of {css}: {e}"))
    }

    /// The whole page's visible text.
    pub async fn body(&self) -> String {
        self.text("body").await
    }

    pub async fn title(&self) -> String {
        self.client.title().await.expect("the page's title")
    }

    pub async fn url(&self) -> String {
        self.client.current_url().await.expect("the page's address").to_string()
    }

    /// Waits until the text of `css` contains `wanted` (the live parts refresh every 2 s).
    pub async fn wait_for_text(&self, css: &str, wanted: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if seen.contains(wanted) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{css} never showed {wanted:?} within {limit:?}; it shows {seen:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `script` in the page (`WebDriver`'s execute, which the page's policy does not govern).
    pub async fn run(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, Vec::new()).await.unwrap_or_else(|e| panic!("run {script}: {e}"))
    }

    /// Saves a screenshot as `NAME.png` in [`Page::shots`].
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::create_dir_all(&self.shots).expect("create the screenshots directory");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("write the screenshot");
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.expect("resize the window");
    }
}
