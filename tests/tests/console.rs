//! The web console in a real headless Chromium, against the whole product: `cordon serve` and the
//! tansu broker on the sandbox's peer, a real agent on its host, the browser on the peer too.
//! An operator signs in, isolates the host (its live connection is cut and the page turns to
//! isolated), releases it, approves a rule's request, changes the default duration and sees the
//! next isolation take it, adds an exclusion to a profile and sees it open on the isolated host
//! without a new isolation; a failed sign-in, a form with a bad SPEC and a POST without the CSRF
//! token are refused and change nothing. The screenshots in `docs/console/` come from this test.
//!
//! Needs root, tansu, Debian's chromium and chromium-driver (ops/install-toolchain.sh) and the
//! binaries built beside it (`cargo build`); fails loudly, never skips, without them. This binary
//! is also the probe the sandbox runs (`console probe ...`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cordon_tests::browser::{Chromium, Page};
use cordon_tests::world::{probe_binary, Options, World, HOST};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        std::process::exit(cordon_tests::probe::main(&args[2..]));
    }
    let tests = vec![Trial::test("an_operator_steers_isolation_from_the_console", console)];
    libtest_mimic::run(&Arguments::from_args(), tests).exit();
}

/// Severity 3 asks an operator to approve a 1 h isolation.
const RULES: &[(&str, &str)] = &[(
    "suspicious.yaml",
    "id: suspicious\ntitle: Suspicious login\ndetection:\n  selection:\n    severity_id: 3\n  condition: selection\n\
     response:\n  isolate:\n    mode: approval\n    duration: 1h\n",
)];

const CONSOLE: &str = "http://127.0.0.1:8700/console";

/// `docs/console/` of this checkout.
fn shots() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../docs/console")
}

fn epoch_ms(text: &str) -> i64 {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text} is not RFC 3339: {e}"));
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).expect("ms")
}

/// What the page's own checks say: no Content-Security-Policy violation, htmx running, every
/// form control labelled.
async fn page_is_sound(page: &Page<'_>, what: &str) -> Result<(), Failed> {
    let checks = page
        .run(
            "return { violations: document.body.dataset.cspViolations || '0', \
             last: document.body.dataset.lastCspViolation || '', htmx: typeof window.htmx, \
             unlabelled: Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea')) \
               .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.name) }",
        )
        .await;
    if checks["violations"] != "0" {
        return Err(format!("{what}: Content-Security-Policy violations: {checks}").into());
    }
    if checks["htmx"] != "object" {
        return Err(format!("{what}: htmx did not load: {checks}").into());
    }
    if checks["unlabelled"].as_array().is_some_and(|names| !names.is_empty()) {
        return Err(format!("{what}: form controls without a label: {checks}").into());
    }
    Ok(())
}

/// A POST of `form` to `path` from inside the page, with its session cookie but without the
/// CSRF token: the HTTP status.
async fn post_without_csrf(page: &Page<'_>, path: &str, form: &str) -> u64 {
    let script = format!(
        "return fetch({path:?}, {{method: 'POST', headers: {{'content-type': 'application/x-www-form-urlencoded'}}, \
         body: {form:?}, redirect: 'manual'}}).then(r => r.status)"
    );
    page.run(&script).await.as_u64().expect("a status")
}

#[expect(clippy::too_many_lines, reason = "one operator's session, step by step, in the order they work")]
fn console() -> Result<(), Failed> {
    let mut world = World::start(RULES, &Options::default());
    let peer = world.sandbox.peer_v4();
    let token = std::fs::read_to_string(world.dir.join("service/api-token")).expect("the API token");
    let chromium = Chromium::start_on_peer(&world.sandbox);
    let mut held = world.sandbox.spawn(world.sandbox.on_host(&probe_binary(), &["probe", "hold", &peer, "8080"]));
    assert_eq!(held.expect_line("a held connection", Duration::from_secs(5)), "connected");
    let world = &world;
    chromium.session(async |client| -> Result<(), Failed> {
        let page = Page { client, shots: shots() };
        let host_page = format!("{CONSOLE}/hosts/{HOST}");

        // A browser without a session is sent to sign in; a wrong token is refused.
        page.open(CONSOLE).await;
        assert!(page.url().await.ends_with("/console/sign-in"), "{}", page.url().await);
        page.screenshot("sign-in").await;
        page.fill("#token", "not-a-token-at-all").await;
        page.fill("#name", "alice").await;
        page.click("button[type=submit]").await;
        let said = page.body().await;
        assert!(said.contains("That token is not one cordon accepts"), "{said}");
        page.open(CONSOLE).await;
        assert!(page.url().await.ends_with("/console/sign-in"), "a failed sign-in opens no session");

        page.fill("#token", token.trim()).await;
        page.fill("#name", "alice").await;
        page.click("button[type=submit]").await;
        assert_eq!(page.title().await, "Fleet · cordon");
        page_is_sound(&page, "fleet").await?;
        page.wait_for_text("#fleet-rows", HOST, Duration::from_secs(5)).await?;

        // Isolate from the console: a form, a confirmation, then the host is cut off and the
        // page turns to isolated by itself.
        page.open(&format!("{host_page}/isolate")).await;
        page_is_sound(&page, "isolate form").await?;
        assert_eq!(page.text("#duration").await, "", "a text input shows its value, not text");
        let prefilled = page.run("return document.getElementById('duration').value").await;
        assert_eq!(prefilled, "5h", "the profile's duration is prefilled");
        // Bad input first: nothing changes, the page says what is wrong next to the field.
        page.fill("#reason", "IR-7").await;
        page.fill("#exclusions", "out,tcp,300.1.1.1/32,443").await;
        page.click("form.wide button[type=submit]").await;
        let problems = page.text("#exclusions-problems").await;
        assert!(problems.contains("300.1.1.1"), "{problems}");
        assert!(page.body().await.contains("Nothing was changed."));
        page.screenshot("isolate-form-problems").await;
        assert_eq!(world.host_view()["generation"], 0, "a bad form changes nothing");
        // Then a good one.
        page.fill("#exclusions", &format!("out,tcp,{peer}/32,9000")).await;
        page.fill("#duration", "10m").await;
        page.click("form.wide button[type=submit]").await;
        let confirm = page.body().await;
        assert!(confirm.contains(&format!("Cut {HOST} off the network?")), "{confirm}");
        assert!(confirm.contains(&format!("out,tcp,{peer}/32,9000")) && confirm.contains("10m"), "{confirm}");
        page.screenshot("isolate-confirm").await;
        let before = Instant::now();
        page.click("button.danger").await;
        let cut = held.expect_line("the held connection to be cut", Duration::from_secs(10));
        assert!(cut.starts_with("broken"), "the held connection: {cut}");
        world.wait_until_refused(Duration::from_secs(2))?;
        assert_eq!(world.host(&["connect", &peer, "9000"]), "ok", "the form's exclusion is open");
        assert_eq!(page.url().await, host_page, "back on the host's page");
        page.wait_for_text("#host-state", "isolated", Duration::from_secs(10)).await?;
        page.wait_for_text("ol.progress", "Confirmed — the host is isolated", Duration::from_secs(10)).await?;
        println!("console: isolated and shown so {:?} after the click", before.elapsed());
        page_is_sound(&page, "host").await?;
        page.screenshot("host").await;
        let view = world.host_view();
        assert!(view["rules"][0].as_str().unwrap().starts_with("operator alice ("), "{view:#}");
        let left = epoch_ms(view["expires_at"].as_str().unwrap()) - cordon_tests::world::now_ms();
        assert!((590_000..=600_000).contains(&left), "10 minutes from the form: {left} ms left");

        // A POST without the CSRF token, with the session's cookie: refused, nothing changed.
        let status = post_without_csrf(&page, &format!("/console/hosts/{HOST}/release"), "reason=forged").await;
        assert_eq!(status, 403, "a release without the CSRF token");
        assert_eq!(world.host_view()["state"], "isolated", "nothing was released");

        // Release from the host page: traffic flows again, the page says released.
        page.fill("#release-reason", "cleaned").await;
        page.click("form[action$='/release'] button").await;
        page.wait_for_text("#host-state", "released", Duration::from_secs(10)).await?;
        world.wait_until_connects(Duration::from_secs(5)).ok_or("traffic never flowed again")?;

        // A rule asks for approval; the operator approves it on the approvals page.
        world.detect(HOST, "ev-approve-1", 3);
        world.wait_for_state("pending_approval", Duration::from_secs(10));
        page.open(&format!("{CONSOLE}/approvals")).await;
        page_is_sound(&page, "approvals").await?;
        assert!(page.body().await.contains("Rules suspicious ask for an automatic isolation of 1h"));
        page.screenshot("approvals").await;
        page.fill(&format!("#approve-{HOST}"), "confirmed by the SOC").await;
        page.click("form[action$='/approve'] button").await;
        world.wait_for_state("isolated", Duration::from_secs(10));
        world.wait_until_refused(Duration::from_secs(2))?;
        page.open(&host_page).await;
        page.fill("#release-reason", "false positive after all").await;
        page.click("form[action$='/release'] button").await;
        world.wait_for_state("released", Duration::from_secs(10));

        // The default duration changed in the policy editor; the next automatic isolation takes it.
        page.open(&format!("{CONSOLE}/policy")).await;
        page_is_sound(&page, "policy").await?;
        page.fill("#default-duration", "2h").await;
        page.fill("#default-reason", "CHG-1: shorter automatic isolations").await;
        page.click("form.profile-form button[value=save]").await;
        assert!(page.body().await.contains("Version 2,"), "a new version");
        page.open(&format!("{host_page}/isolate")).await;
        let prefilled = page.run("return document.getElementById('duration').value").await;
        assert_eq!(prefilled, "2h", "the new default is prefilled");
        page.fill("#duration", "").await;
        page.fill("#reason", "IR-8").await;
        page.click("form.wide button[type=submit]").await;
        assert!(page.body().await.contains("It is lifted automatically after 2h."));
        page.click("button.danger").await;
        let view = world.wait_for_state("isolated", Duration::from_secs(10));
        let left = epoch_ms(view["expires_at"].as_str().unwrap()) - cordon_tests::world::now_ms();
        assert!((7_190_000..=7_200_000).contains(&left), "2 h from the policy: {left} ms left");
        world.wait_until_refused(Duration::from_secs(2))?;

        // An exclusion added to the profile opens on the isolated host live: no new isolation.
        page.open(&format!("{CONSOLE}/policy")).await;
        page.fill("#default-exclusions", &format!("out,tcp,{peer}/32,8080")).await;
        page.fill("#default-reason", "CHG-2: the historian").await;
        page.click("form.profile-form button[value=save]").await;
        world.wait_until_connects(Duration::from_secs(10)).ok_or("the profile's exclusion never opened")?;
        let (code, history, _) = world.enforcer(&["history", "--json"]);
        assert_eq!(code, 0);
        let history: serde_json::Value = serde_json::from_str(&history).expect("history --json");
        let events: Vec<&str> = history.as_array().unwrap().iter().filter_map(|e| e["event"].as_str()).collect();
        assert_eq!(events.last(), Some(&"updated"), "applied to the isolation in force, not a new one: {events:?}");
        let view = world.wait_for_state("isolated", Duration::from_secs(10));
        assert!(view["audit"].as_array().unwrap().iter().any(|e| e["why"].as_str().unwrap().contains("applied live")));
        page.open(&format!("{CONSOLE}/policy")).await;
        page.screenshot("policy").await;

        // The fleet (wide and narrow), the bulk preview and the history, for the tour.
        page.open(CONSOLE).await;
        page.screenshot("fleet").await;
        page.resize(390, 844).await;
        page.open(CONSOLE).await;
        page.screenshot("fleet-narrow").await;
        page.resize(1280, 800).await;
        page.open(&format!("{CONSOLE}/bulk?tag=ISOLATED%20FROM%20NETWORK")).await;
        page_is_sound(&page, "bulk").await?;
        assert!(page.text("p.count").await.starts_with("1 host(s) match"));
        page.screenshot("bulk").await;
        page.open(&format!("{CONSOLE}/history?host={HOST}")).await;
        page_is_sound(&page, "history").await?;
        page.screenshot("history").await;
        let csv = page
            .run(&format!("return fetch('/console/history.csv?host={HOST}').then(r => r.text())"))
            .await;
        let csv = csv.as_str().unwrap_or_default();
        assert!(csv.starts_with("at,host,from,to,by,event_id,generation,why\n") && csv.contains("applied live, deadline kept"), "{csv}");

        // Signed out, the console asks to sign in again.
        page.click("form.signout button").await;
        page.open(CONSOLE).await;
        assert!(page.url().await.ends_with("/console/sign-in"));
        Ok(())
    })
}
