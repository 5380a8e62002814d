//! Shared harness for the end-to-end tests: a sandbox of two network namespaces joined by a veth
//! pair and a dedicated cgroup, the processes started inside it, and the probe that tests run
//! there to observe the network.
//!
//! Safety (see shared/TOOLCHAIN.md): everything a sandbox creates (network namespaces, veth pair,
//! cgroup, bpffs pin directory, state directory) is its own, uniquely named, and removed by
//! `Drop` even when the test fails. Addresses come from 198.18.0.0/15 and `fd00::/8` and are never
//! routed to the machine's own namespace. Programs are attached only to the sandbox's cgroup and,
//! through `nsenter`, only to interfaces inside its namespaces.

pub mod browser;
pub mod chaos;
pub mod fleet;
pub mod otlp;
pub mod probe;
pub mod world;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT_SANDBOX: AtomicU32 = AtomicU32::new(1);

/// The cgroup v2 mount point, read from /proc/mounts (never hard-coded).
pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .expect("these tests need a cgroup v2 mount")
}

/// Panics with a clear reason when the kernel tests cannot run here: they must fail loudly,
/// never skip silently.
pub fn require_kernel_test_environment() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "kernel tests must run as root (they create network namespaces, cgroups and load eBPF programs)"
    );
    let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    assert!(
        mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf")),
        "bpffs is not mounted: run `mount -t bpf bpf /sys/fs/bpf` (ops/install-toolchain.sh does)"
    );
    for tool in ["ip", "nsenter"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "kernel tests need `{tool}`"
        );
    }
}

/// The path of `tool` on `PATH`; panics, naming what installs it, when it is missing.
pub fn which(tool: &str) -> PathBuf {
    let output = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().expect("sh");
    assert!(output.status.success(), "this test needs {tool}: run ops/install-toolchain.sh");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// Runs `command` to its end: exit code (-1 if killed), standard output and error, trimmed.
pub fn output_of(mut command: Command) -> (i32, String, String) {
    let output = command.output().expect("run command");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

/// A test host and its peer: netns `<name>-host` (the host to isolate, 198.18.N.1 and
/// `fd00:c0d:N::1`) and `<name>-peer` (198.18.N.2, `fd00:c0d:N::2`), a veth pair between them, a
/// cgroup, a pin directory and a state directory.
pub struct Sandbox {
    pub name: String,
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub host_ns: String,
    pub peer_ns: String,
    pub host_if: String,
    pub subnet: u32,
    children: Vec<Child>,
}

fn run(program: &str, args: &[&str]) -> Output {
    let output =
        Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Sandbox {
    pub fn new() -> Sandbox {
        require_kernel_test_environment();
        let n = NEXT_SANDBOX.fetch_add(1, Ordering::SeqCst);
        let name = format!("cordon-t{}-{n}", std::process::id() % 100_000);
        let subnet = (std::process::id() + n) % 250 + 1;
        let cgroup = cgroup2_root().join(&name);
        fs::create_dir_all(&cgroup).expect("create test cgroup");
        let state_dir = std::env::temp_dir().join(format!("{name}-state"));
        let _ = fs::remove_dir_all(&state_dir);
        let sandbox = Sandbox {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/{name}")),
            state_dir,
            host_ns: format!("{name}-host"),
            peer_ns: format!("{name}-peer"),
            host_if: format!("ct{n}h"),
            cgroup,
            subnet,
            name,
            children: Vec::new(),
        };
        sandbox.build_network();
        sandbox
    }

    fn build_network(&self) {
        let (h, p) = (&self.host_ns, &self.peer_ns);
        let peer_if = self.host_if.replace('h', "p");
        run("ip", &["netns", "add", h]);
        run("ip", &["netns", "add", p]);
        // Created inside the host namespace, so the machine's own namespace never sees it.
        run(
            "ip",
            &["-n", h, "link", "add", &self.host_if, "type", "veth", "peer", "name", &peer_if, "netns", p],
        );
        let s = self.subnet;
        for (ns, dev, v4, v6) in [
            (h, self.host_if.as_str(), format!("198.18.{s}.1/24"), format!("fd00:c0d:{s}::1/64")),
            (p, peer_if.as_str(), format!("198.18.{s}.2/24"), format!("fd00:c0d:{s}::2/64")),
        ] {
            run("ip", &["-n", ns, "addr", "add", &v4, "dev", dev]);
            run("ip", &["-n", ns, "addr", "add", &v6, "dev", dev, "nodad"]);
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        // Both ends must report the link up before a test sends anything.
        let deadline = Instant::now() + Duration::from_secs(5);
        for (ns, dev) in [(h, self.host_if.as_str()), (p, peer_if.as_str())] {
            loop {
                let shown = run("ip", &["-n", ns, "-o", "link", "show", "dev", dev]);
                if String::from_utf8_lossy(&shown.stdout).contains("state UP") {
                    break;
                }
                assert!(Instant::now() < deadline, "veth {dev} in {ns} did not come up");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    pub fn host_v4(&self) -> String {
        format!("198.18.{}.1", self.subnet)
    }
    pub fn peer_v4(&self) -> String {
        format!("198.18.{}.2", self.subnet)
    }
    pub fn host_v6(&self) -> String {
        format!("fd00:c0d:{}::1", self.subnet)
    }
    pub fn peer_v6(&self) -> String {
        format!("fd00:c0d:{}::2", self.subnet)
    }

    /// `program args` as on a real host of which this sandbox is the whole machine: in the
    /// sandbox's cgroup, then in a cgroup namespace and a mount namespace of its own where cgroup
    /// v2 is mounted again (so the sandbox's cgroup is its cgroup v2 root, what `--cgroup`
    /// defaults to), in the host network namespace, with the machine's `/sys` (whose
    /// `/sys/class/net` lists the machine's interfaces, not the sandbox's). Before running it,
    /// checks that the new root is the sandbox's cgroup (the same kernfs inode), and exits 97
    /// without running it otherwise: nothing is ever attached to the machine's own root.
    pub fn as_whole_host(&self, program: &Path, args: &[&str]) -> Command {
        use std::os::unix::fs::MetadataExt as _;
        let mount_point = cgroup2_root();
        let expected = fs::metadata(&self.cgroup).expect("the sandbox cgroup").ino();
        let inner = format!(
            "umount -l {mp} && mount -t cgroup2 none {mp} && [ \"$(stat -c %i {mp})\" = {expected} ] || \
             {{ echo 'whole-host sandbox: the cgroup v2 root is not the sandbox cgroup; refusing' >&2; exit 97; }}; \
             exec nsenter --net=/run/netns/{ns} \"$0\" \"$@\"",
            mp = mount_point.display(),
            ns = self.host_ns
        );
        let outer = format!(
            "echo $$ > {}/cgroup.procs && exec unshare --cgroup --mount --propagation private -- sh -c \"$0\" \"$@\"",
            self.cgroup.display()
        );
        let mut command = Command::new("sh");
        command.arg("-c").arg(outer).arg(inner).arg(program).args(args);
        command
    }

    /// `cordon-enforcer` with this sandbox's cgroup, pin and state directories, run inside the
    /// host namespace (so interface names resolve there and nowhere else).
    pub fn enforcer(&self, enforcer: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/run/netns/{}", self.host_ns)).arg(enforcer);
        command
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args);
        command
    }

    /// A command that runs `program args` as a process of the isolated host: inside the test
    /// cgroup and the host namespace.
    pub fn on_host(&self, program: &Path, args: &[&str]) -> Command {
        Self::in_namespace(&self.host_ns, Some(&self.cgroup), program, args)
    }

    /// A command that runs `program args` as a process of the host namespace in `cgroup` (a
    /// cgroup this sandbox made under its own).
    pub fn in_cgroup_on_host(&self, cgroup: &Path, program: &Path, args: &[&str]) -> Command {
        assert!(cgroup.starts_with(&self.cgroup), "{} is not under the sandbox's cgroup", cgroup.display());
        Self::in_namespace(&self.host_ns, Some(cgroup), program, args)
    }

    /// `cordon-enforcer ... --config CONFIG run`, the agent, as a process of the isolated host
    /// (in the test cgroup and the host namespace), with this sandbox's directories.
    pub fn agent_on_host(&self, enforcer: &Path, config: &Path) -> Command {
        let (cgroup, pin_dir, state_dir, config) = (
            self.cgroup.to_string_lossy(),
            self.pin_dir.to_string_lossy(),
            self.state_dir.to_string_lossy(),
            config.to_string_lossy(),
        );
        let args = [
            "--cgroup",
            &cgroup,
            "--pin-dir",
            &pin_dir,
            "--state-dir",
            &state_dir,
            "--config",
            &config,
            "run",
        ];
        self.on_host(enforcer, &args)
    }

    /// The processes of this sandbox's agent (`enforcer ... run`, however it was started).
    pub fn agent_pids(&self, enforcer: &Path) -> Vec<i32> {
        let enforcer = enforcer.to_string_lossy();
        let mut pids = Vec::new();
        for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.starts_with(&*enforcer) && cmdline.contains(&self.name) && cmdline.ends_with(" run ") {
                pids.push(pid);
            }
        }
        pids
    }

    /// A command that runs `program args` on the peer (outside the test cgroup).
    pub fn on_peer(&self, program: &Path, args: &[&str]) -> Command {
        Self::in_namespace(&self.peer_ns, None, program, args)
    }

    /// `command`, in a mount namespace of its own where `/etc/resolv.conf` is `resolv_conf` (as
    /// `ip netns exec` does): the machine's file is never touched.
    pub fn with_resolv_conf(command: &Command, resolv_conf: &Path) -> Command {
        let mut wrapped = Command::new("unshare");
        wrapped
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"")
            .arg(resolv_conf)
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        wrapped
    }

    fn in_namespace(namespace: &str, cgroup: Option<&Path>, program: &Path, args: &[&str]) -> Command {
        let join_cgroup =
            cgroup.map(|cgroup| format!("echo $$ > {}/cgroup.procs && ", cgroup.display())).unwrap_or_default();
        let script = format!("{join_cgroup}exec nsenter --net=/run/netns/{namespace} \"$0\" \"$@\"");
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).arg(program).args(args);
        command
    }

    /// Starts `command` in the background; it is killed when the sandbox is dropped. Returns a
    /// reader over its standard output.
    pub fn spawn(&mut self, command: Command) -> LineReader {
        let (child, reader) = spawn_reading(command);
        self.children.push(child);
        reader
    }

    /// Starts `command` in the background with a pipe to its standard input; it is killed when
    /// the sandbox is dropped. Returns the pipe and a reader over its standard output.
    pub fn spawn_piped(&mut self, mut command: Command) -> (std::process::ChildStdin, LineReader) {
        command.stdin(Stdio::piped());
        let (mut child, reader) = spawn_reading(command);
        let stdin = child.stdin.take().expect("stdin");
        self.children.push(child);
        (stdin, reader)
    }

    /// Starts `command` in the background with its output discarded (a server whose logs the
    /// test does not read); it is killed when the sandbox is dropped. Returns its process id.
    pub fn spawn_quiet(&mut self, mut command: Command) -> u32 {
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn test process");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Detaches the isolation's pinned links `names` (`BPF_LINK_DETACH`, their pins kept), as root
    /// on the host can, through `probe` (a test binary that answers `probe detach-link PATH`).
    pub fn detach_links(&self, probe: &Path, names: &[&str]) {
        let links = self.pin_dir.join(enforcer_common::PIN_LAYOUT_VERSION).join("links");
        for name in names {
            let mut detach = Command::new(probe);
            detach.args(["probe", "detach-link"]).arg(links.join(name));
            let (_, answer, _) = output_of(detach);
            assert_eq!(answer, "ok", "detach the link {name}");
        }
    }

    /// Kills the background processes started so far.
    pub fn kill_children(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

/// A scratch directory of one test, `cordon-<name>-<pid>` in the temporary directory: emptied when
/// made, removed when dropped (a failing test's too).
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("cordon-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("cannot create {}: {error}", dir.display()));
        ScratchDir(dir)
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill_children();
        // Detach whatever is still pinned: removing the pins closes the links.
        let _ = fs::remove_dir_all(&self.pin_dir);
        for ns in [&self.host_ns, &self.peer_ns] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
        remove_cgroup(&self.cgroup);
        // The state directory, and every scratch file or directory a test named after it
        // (`<state dir>.bin`, `.toml`, `.e2e`, ...).
        let prefix = self.state_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let (Some(parent), false) = (self.state_dir.parent(), prefix.is_empty()) {
            for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let path = entry.path();
                    let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                }
            }
        }
    }
}

/// Kills what is left in `cgroup` (a cgroup of the test's own) and removes it, within 5 s:
/// processes spawned into it may take a moment to be reaped.
pub fn remove_cgroup(cgroup: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::remove_dir(cgroup).is_err() && cgroup.exists() && Instant::now() < deadline {
        if let Ok(procs) = fs::read_to_string(cgroup.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: signalling a process that lives in the test's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `command` with its standard output piped (its errors go to the test's); the caller
/// owns the process (and kills it). Returns it and a reader over its output.
pub fn spawn_reading(mut command: Command) -> (Child, LineReader) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn test process");
    let stdout = child.stdout.take().expect("stdout");
    (child, LineReader { lines: BufReader::new(stdout) })
}

/// A tmpfs mounted on a directory the test made, unmounted (lazily: a process may still hold it)
/// on drop.
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. `"16m"`) on `dir` (created); needs root, as CI has.
    pub fn mount(dir: &Path, size: &str) -> SmallDisk {
        fs::create_dir_all(dir).expect("create the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "cordon-test-disk"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "this test needs root to mount a small tmpfs as the state disk (CI runs as root): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        SmallDisk(dir.to_path_buf())
    }

    /// Fills the disk with one file, until it takes no more; returns the file (remove it to free
    /// the space).
    pub fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.0.join("filler");
        let mut file = fs::File::create(&path).expect("create the filler");
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Reads a background process's output line by line, with a timeout.
pub struct LineReader {
    lines: BufReader<ChildStdout>,
}

impl LineReader {
    /// The next line, or a panic naming `what` if none arrives within `timeout`.
    pub fn expect_line(&mut self, what: &str, timeout: Duration) -> String {
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.lines.get_ref());
        if self.lines.buffer().is_empty() {
            let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: polling one valid descriptor we own.
            let ready = unsafe { libc::poll(&raw mut poll, 1, millis) };
            assert!(ready > 0, "no output from the process within {timeout:?} while waiting for {what}");
        }
        let mut line = String::new();
        self.lines.read_line(&mut line).expect("read process output");
        assert!(!line.is_empty(), "the process ended while waiting for {what}");
        line.trim_end().to_owned()
    }

    /// The next line within `timeout`; `None` when none comes or the process ended.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        if self.lines.buffer().is_empty() && !self.readable_within(timeout) {
            return None;
        }
        let mut line = String::new();
        match self.lines.read_line(&mut line) {
            Ok(n) if n > 0 => Some(line.trim_end().to_owned()),
            _ => None,
        }
    }

    /// Succeeds if the process prints nothing (and does not end) for `duration`.
    pub fn expect_silence(&mut self, duration: Duration) -> Result<(), String> {
        if !self.lines.buffer().is_empty() || self.readable_within(duration) {
            let mut line = String::new();
            let _ = self.lines.read_line(&mut line);
            return Err(format!("expected silence for {duration:?}, got '{}'", line.trim_end()));
        }
        Ok(())
    }

    /// Succeeds once the process has closed its output, within `timeout`.
    pub fn expect_eof(&mut self, timeout: Duration) -> Result<(), String> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.readable_within(until.saturating_duration_since(Instant::now())) {
                let mut line = String::new();
                if self.lines.read_line(&mut line).map_or(true, |n| n == 0) {
                    return Ok(());
                }
            }
        }
        Err(format!("the process did not end within {timeout:?}"))
    }

    /// Appends every further line to `file` until the process closes its output; the returned
    /// handle ends then.
    pub fn copy_to(mut self, file: &Path) -> std::thread::JoinHandle<()> {
        use std::io::Write as _;
        let mut out = fs::OpenOptions::new().create(true).append(true).open(file).expect("open the log file");
        std::thread::spawn(move || {
            let mut line = String::new();
            while self.lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                let _ = out.write_all(line.as_bytes());
                line.clear();
            }
        })
    }

    /// Prints every further line with `prefix` (for the test's log) until the process closes its
    /// output; the returned handle ends then.
    pub fn echo(mut self, prefix: String) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut line = String::new();
            while self.lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                println!("{prefix}: {}", line.trim_end());
                line.clear();
            }
        })
    }

    fn readable_within(&self, timeout: Duration) -> bool {
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.lines.get_ref());
        let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: polling one valid descriptor we own.
        unsafe { libc::poll(&raw mut poll, 1, millis) > 0 }
    }
}

/// `openssl ARGS` in `dir`, which must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (Debian package openssl)");
    assert!(status.success(), "openssl {args:?} failed");
}

/// In `dir`: a CA `ca` (`ca.crt`, made if missing) and a certificate it issued, `leaf.crt` with
/// `leaf.key` (0600), for `ip` with `usage` (`serverAuth` or `clientAuth`).
pub fn issue_certificate(dir: &Path, ca: &str, leaf: &str, usage: &str, ip: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::create_dir_all(dir).expect("create the pki dir");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    if !dir.join(&ca_crt).exists() {
        let subject = format!("/CN={ca}");
        let mut request = vec!["req", "-x509"];
        request.extend(ec);
        request.extend(["-days", "1", "-subj", &subject, "-keyout", &ca_key, "-out", &ca_crt]);
        openssl(dir, &request);
    }
    let (key, csr, crt, ext) = (format!("{leaf}.key"), format!("{leaf}.csr"), format!("{leaf}.crt"), format!("{leaf}.ext"));
    let mut request = vec!["req"];
    request.extend(ec);
    request.extend(["-subj", "/CN=cordon-test", "-keyout", &key, "-out", &csr]);
    openssl(dir, &request);
    fs::write(dir.join(&ext), format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"))
        .expect("write the extensions");
    openssl(dir, &["x509", "-req", "-in", &csr, "-CA", &ca_crt, "-CAkey", &ca_key, "-CAcreateserial", "-days", "1",
        "-extfile", &ext, "-out", &crt]);
    fs::set_permissions(dir.join(&key), fs::Permissions::from_mode(0o600)).expect("chmod the key");
}

/// In `dir`: a CA `ca.crt`, a server certificate `server.crt`/`server.key` it issued for
/// `server_ip`, and a client certificate `client.crt`/`client.key`: for mutual TLS in front of a
/// broker.
pub fn make_pki(dir: &Path, server_ip: &str) {
    issue_certificate(dir, "ca", "server", "serverAuth", server_ip);
    issue_certificate(dir, "ca", "client", "clientAuth", server_ip);
}
