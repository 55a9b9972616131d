//! Running the compiled `tokenwarden` binary and reading its output.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Running {
    pub child: Child,
    /// Every stdout line so far.
    pub lines: Vec<String>,
    rx: mpsc::Receiver<String>,
    pub addr: String,
}

/// Starts `tokenwarden <args>` in `cwd` and waits for its "listening" log line.
pub fn start(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenwarden"));
    command
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The developer's own configuration must not leak into the test.
    for (name, _) in std::env::vars() {
        if name.starts_with("TOKENWARDEN_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("binary starts");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    let mut running = Running {
        child,
        lines: Vec::new(),
        rx,
        addr: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.addr.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = running.rx.recv_timeout(left) else {
            let _ = running.child.kill();
            panic!(
                "no listening line; output so far:\n{}",
                running.lines.join("\n")
            );
        };
        if line.contains("\"listening\"")
            && let Some(start) = line.find("\"addr\":\"")
        {
            let rest = &line[start + 8..];
            running.addr = rest[..rest.find('"').expect("closing quote")].to_owned();
        }
        running.lines.push(line);
    }
    running
}

impl Running {
    /// Sends SIGTERM, waits for a clean exit and returns all output.
    pub fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                break exit;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        // Drain what the reader threads still hold.
        while let Ok(line) = self.rx.recv_timeout(Duration::from_millis(300)) {
            self.lines.push(line);
        }
        assert!(
            exit.success(),
            "exit {exit:?}; output:\n{}",
            self.lines.join("\n")
        );
        self.lines.join("\n")
    }
}
