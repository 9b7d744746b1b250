//! `kv_server`'s status page (`GET /`) in a real browser: three processes on loopback,
//! headless Chromium loads the page from one of them, and the DOM it renders must show
//! all three nodes with exactly one leader. A screenshot of the page is written to
//! `target/tmp/kv-status-page.png` (docs/images/status-page.png is one such).
//!
//! Chromium is looked up as `$RAFTNODE_CHROMIUM`, else `chromium`, `chromium-browser`,
//! `google-chrome` on `PATH`. Without one the test prints that it skipped, unless
//! `RAFTNODE_REQUIRE_BROWSER` is set (CI sets it): then it fails and says so.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Only failures wait this long.
const DEADLINE: Duration = Duration::from_secs(60);
/// Longest one Chromium run may take before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the example (a no-op when fresh) and returns its path, as tests/kv_service.rs.
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary is in target/<profile>/deps");
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--example", "kv_server", "--features", "testing"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    assert!(
        build.status().expect("running cargo build").success(),
        "building the kv_server example failed"
    );
    profile_dir.join("examples").join("kv_server")
}

/// A free loopback port below the ephemeral range (see tests/kv_service.rs for why).
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, span) = (10_000u32, 22_000u32);
    let start = std::process::id().wrapping_mul(131) % span;
    for _ in 0..span {
        let port = low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).expect("below 32000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

/// `GET path` on a fresh connection; the status code and the body.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// A `PUT` on a fresh connection; true on `204`.
fn put(addr: &str, key: &str, value: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "PUT /kv/{key} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{value}",
        value.len()
    );
    let mut answer = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 204")
}

/// A child process killed and reaped when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Chromium to use, or `None`.
fn find_browser() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RAFTNODE_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=...`),
/// giving the page's script 3 s of virtual time (its fetches included) to render.
fn browse(browser: &Path, url: &str, mode: &str, profile: &Path) -> Output {
    let child = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .args([
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args([
            "--window-size=1100,520",
            "--virtual-time-budget=3000",
            mode,
            url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", browser.display()));
    let mut child = KillOnDrop(child);
    let started = Instant::now();
    while child.0.try_wait().expect("try_wait").is_none() {
        assert!(
            started.elapsed() < BROWSER_TIMEOUT,
            "Chromium still running after {BROWSER_TIMEOUT:?}"
        );
        // Poll interval; the loop is bounded by the assertion above.
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut output = Output {
        status: child.0.wait().expect("wait"),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    let _ = child
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut output.stdout);
    let _ = child
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_end(&mut output.stderr);
    output
}

/// What the rendered DOM shows: the roles by node id, and whether the script finished
/// a refresh (`<body data-state="ready">`).
fn rendered_roles(dom: &str) -> (bool, BTreeMap<u64, String>) {
    let ready = dom.contains("data-state=\"ready\"");
    let mut roles = BTreeMap::new();
    for row in dom.split("<tr ").skip(1) {
        let attribute = |name: &str| {
            let start = row.find(&format!("{name}=\""))? + name.len() + 2;
            row[start..].split('"').next().map(str::to_string)
        };
        if let (Some(node), Some(role)) = (attribute("data-node"), attribute("data-role")) {
            if let Ok(node) = node.parse() {
                roles.insert(node, role);
            }
        }
    }
    (ready, roles)
}

/// Proves the status page works in a browser: served by a follower, it lists nodes 1, 2
/// and 3, each reached (no "unreachable" row), exactly one of them leader, with the
/// leader's per-peer progress; and Chromium can screenshot it.
#[test]
fn status_page_shows_every_node_and_one_leader_in_chromium() {
    let Some(browser) = find_browser() else {
        assert!(
            std::env::var_os("RAFTNODE_REQUIRE_BROWSER").is_none(),
            "RAFTNODE_REQUIRE_BROWSER is set but no Chromium was found: set RAFTNODE_CHROMIUM \
             or put chromium on PATH (Debian: apt-get install -y chromium)"
        );
        eprintln!(
            "SKIPPED status_page_shows_every_node_and_one_leader_in_chromium: no Chromium \
             found (set RAFTNODE_REQUIRE_BROWSER=1 to make this a failure)"
        );
        return;
    };
    let binary = server_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = [1u64, 2, 3];
    let addresses = || -> BTreeMap<u64, String> {
        ids.iter()
            .map(|id| (*id, format!("127.0.0.1:{}", free_port())))
            .collect()
    };
    let joined = |map: &BTreeMap<u64, String>| {
        map.iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let http_of = addresses();
    let (raft, http) = (joined(&addresses()), joined(&http_of));
    let _children: Vec<KillOnDrop> = ids
        .iter()
        .map(|id| {
            let child = Command::new(&binary)
                .args(["--id", &id.to_string(), "--cluster", &raft])
                .args(["--http", &http_of[id], "--peers-http", &http])
                .args(["--tick-ms", "50"])
                .arg("--data-dir")
                .arg(dir.path().join(format!("n{id}")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn kv_server");
            KillOnDrop(child)
        })
        .collect();

    // A leader that every node names, and a few writes so the indexes move.
    let deadline = Instant::now() + DEADLINE;
    let leader = loop {
        let leader_of = |id: &u64| {
            let (status, body) = get(&http_of[id], "/status")?;
            let start = body.find("\"leader\":")? + 9;
            let digits: String = body[start..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            (status == 200)
                .then(|| digits.parse::<u64>().ok())
                .flatten()
        };
        let named: Vec<Option<u64>> = ids.iter().map(leader_of).collect();
        if let Some(Some(l)) = named.first() {
            if named.iter().all(|n| *n == Some(*l)) {
                break *l;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {named:?}");
        // Poll interval; the loop is bounded by `deadline`.
        std::thread::sleep(Duration::from_millis(20));
    };
    for i in 0..5 {
        assert!(put(&http_of[&leader], &format!("k{i}"), "v"), "PUT k{i}");
    }
    let follower = *ids.iter().find(|id| **id != leader).expect("a follower");
    let url = format!("http://{}/", http_of[&follower]);

    let profile = tempfile::tempdir().expect("browser profile dir");
    let deadline = Instant::now() + DEADLINE;
    let dom = loop {
        let output = browse(&browser, &url, "--dump-dom", profile.path());
        let dom = String::from_utf8_lossy(&output.stdout).into_owned();
        let (ready, roles) = rendered_roles(&dom);
        let leaders = roles.values().filter(|r| *r == "leader").count();
        if ready && roles.len() == 3 && leaders == 1 && !roles.values().any(|r| r == "unreachable")
        {
            break dom;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed three reachable nodes and one leader: ready={ready} \
             roles={roles:?}\nstderr: {}\nDOM: {dom}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let (_, roles) = rendered_roles(&dom);
    assert_eq!(roles.keys().copied().collect::<Vec<_>>(), ids);
    assert_eq!(
        roles[&leader], "leader",
        "the page names the leader every node names"
    );
    assert!(
        dom.contains(&format!("node {leader})")) && dom.contains("data-peer=\""),
        "the leader's progress table is filled: {dom}"
    );

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kv-status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let shot = format!("--screenshot={}", screenshot.display());
    let output = browse(&browser, &url, &shot, profile.path());
    let png = std::fs::read(&screenshot).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {} ({e}); Chromium said: {}",
            screenshot.display(),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is a PNG"
    );
    eprintln!("status page screenshot: {}", screenshot.display());
}
