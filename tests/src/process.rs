//! Runs a binary of the workspace as a child process, the way a user does.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process, killed when dropped.
pub struct Running {
    pub child: Child,
}

impl Running {
    pub fn spawn(command: &mut Command) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn binary");
        Self { child }
    }

    /// Waits until `url` answers 200.
    pub async fn wait_ready(&mut self, url: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("process exited early with {status}");
            }
            if let Ok(r) = reqwest::get(url).await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{url} not ready within {timeout:?}");
    }

    /// Sends SIGTERM and returns the exit status.
    pub async fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "did not stop within {timeout:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `redis-server` of the test's own (the binary the stack installs), on
/// a port of its own, that the test may kill and start again on the same
/// port: Redis outages without touching the shared stack.
pub struct PrivateRedis {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = free_port();
        let mut redis = Self {
            child: None,
            port,
            url: format!("redis://127.0.0.1:{port}"),
        };
        redis.restart().await;
        redis
    }

    /// Starts it (again) on its port and waits until it answers.
    pub async fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by hack/stack.sh)");
        self.child = Some(child);
        let client = redis::Client::open(self.url.as_str()).expect("redis url");
        for _ in 0..200 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("private redis-server did not start on {}", self.port);
    }

    /// Kills it (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
