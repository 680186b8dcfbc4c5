//! `GET /docs`: the API reference page, rendered from the OpenAPI document,
//! checked in a real browser. Headless Chromium (Debian's `chromium`, which
//! `deploy/local/test.sh` installs and names in `TTSQ_TEST_CHROMIUM`) loads
//! it from a running API with every other host unresolvable, its DOM holds
//! every route and webhook event of the document the API serves, and a
//! screenshot of it is written under the target directory.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use ttsq_testkit::{TestApp, TestOptions};

/// Longest a browser run may take before the test gives up on it.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// The Chromium of `TTSQ_TEST_CHROMIUM`, else `chromium` on the `PATH`;
/// without one the test fails, saying how to get it, rather than passing
/// without checking anything.
fn chromium() -> PathBuf {
    let found = std::env::var_os("TTSQ_TEST_CHROMIUM")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("chromium"))
                    .find(|candidate| candidate.is_file())
            })
        });
    match found {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "no Chromium for the /docs browser test: install Debian's `chromium` \
             (`apt-get install chromium`; deploy/local/test.sh does it when missing) \
             or set TTSQ_TEST_CHROMIUM to a Chromium binary"
        ),
    }
}

/// Runs headless Chromium on `url` with `args`, in a profile of its own,
/// every host but loopback unresolvable (so the page can only work
/// offline), killed after [`BROWSER_TIMEOUT`]. Its output goes to files in
/// `dir` (a pipe would fill with a large DOM while nobody reads it).
fn browse(dir: &Path, url: &str, args: &[&str]) -> Output {
    let profile = dir.join("profile");
    let stdout = dir.join("stdout");
    let stderr = dir.join("stderr");
    let file = |path: &Path| Stdio::from(std::fs::File::create(path).expect("an output file"));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            // Containers often give /dev/shm a few MiB only.
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(file(&stdout))
        .stderr(file(&stderr))
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    let status = loop {
        match child.try_wait().expect("chromium can be waited on") {
            Some(status) => break status,
            None if started.elapsed() > BROWSER_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromium did not finish within {BROWSER_TIMEOUT:?}: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    Output {
        status,
        stdout: std::fs::read(&stdout).expect("chromium's output"),
        stderr: std::fs::read(&stderr).expect("chromium's errors"),
    }
}

/// The text a reader sees in `html`: tags dropped, the five entities the
/// renderer writes decoded, whitespace collapsed.
fn visible_text(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn the_reference_page_shows_every_route_and_webhook_in_a_real_browser() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    let url = format!("{}/docs", app.base_url);

    // Served without a key, self-contained, cacheable by its tag.
    let response = app.http.get(&url).send().await.expect("request sent");
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    let policy = header("content-security-policy");
    assert!(
        policy.starts_with("default-src 'none';") && !policy.contains("http"),
        "the page may load nothing: {policy}"
    );
    let etag = header("etag");
    assert!(!etag.is_empty(), "no ETag");
    let html = response.text().await.expect("body");
    assert!(!html.contains("<script"), "the page runs no script");
    let again = app
        .http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("request sent");
    assert_eq!(again.status(), 304, "a current copy is not sent again");

    let document: Value = app
        .http
        .get(format!("{}/openapi.json", app.base_url))
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("the document");
    let mut routes = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            routes.push(format!("{} {path}", method.to_ascii_uppercase()));
        }
    }
    let webhooks: Vec<String> = document["webhooks"]
        .as_object()
        .expect("webhooks")
        .keys()
        .map(|event| format!("POST {event}"))
        .collect();
    assert!(routes.len() >= 25 && webhooks.len() >= 2);
    let schemas = document["components"]["schemas"]
        .as_object()
        .expect("schemas");

    let (dump, shot) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            let dir = tempfile::tempdir().expect("a directory for the browser");
            let dom = browse(dir.path(), &url, &["--dump-dom"]);
            let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("docs-page.png");
            let _ = std::fs::remove_file(&shot);
            let screenshot = browse(
                dir.path(),
                &url,
                &[
                    &format!("--screenshot={}", shot.display()),
                    "--window-size=1280,2000",
                    "--hide-scrollbars",
                ],
            );
            assert!(
                screenshot.status.success(),
                "chromium could not take the screenshot: {}",
                String::from_utf8_lossy(&screenshot.stderr)
            );
            (dom, shot)
        }
    })
    .await
    .expect("the browser runs");

    assert!(
        dump.status.success(),
        "chromium could not load {url}: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dom = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dom.contains("<main>") && dom.contains("<nav"),
        "the browser did not render the page: {dom}"
    );
    let text = visible_text(&dom);
    let missing: Vec<&String> = routes
        .iter()
        .chain(&webhooks)
        .filter(|route| !text.contains(route.as_str()))
        .collect();
    assert!(missing.is_empty(), "not on the page: {missing:?}");
    assert_eq!(
        dom.matches("<article class=\"operation\"").count(),
        routes.len() + webhooks.len(),
        "one section per route and webhook"
    );
    for name in schemas.keys() {
        assert!(
            dom.contains(&format!("id=\"schema-{name}\"")),
            "schema {name} has no section"
        );
    }

    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().expect("4 bytes"));
    let height = u32::from_be_bytes(png[20..24].try_into().expect("4 bytes"));
    assert_eq!((width, height), (1280, 2000));
    // A blank or error page of that size compresses to a few kilobytes.
    assert!(
        png.len() > 60_000,
        "the screenshot is {} bytes: an empty page?",
        png.len()
    );
    eprintln!("screenshot of /docs: {}", shot.display());
}

#[test]
fn visible_text_drops_tags_and_decodes_entities() {
    assert_eq!(
        visible_text("<h3><span class=\"m\">GET</span> <code>/a/{id}</code></h3>&lt;x&gt; &amp;"),
        "GET /a/{id} <x> &"
    );
}
