//! Leader election through a Lease: two replicas never lead at once, a
//! released lease passes to the waiting replica, and a leader cut off from the
//! API server steps down before another replica takes over. Runs with the
//! operator's own (RBAC-limited) identity.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use strata_operator::leader::{LeaderElector, StepDownReason};
use strata_tests::{TestNamespace, env, operator_client, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

#[tokio::test]
async fn only_one_replica_leads_and_release_hands_over() {
    let ns = TestNamespace::new().await;
    let leases: Api<Lease> = Api::namespaced(operator_client().await, &ns.name);
    let name = unique("lease-");
    let first = LeaderElector::new(leases.clone(), &name, "replica-a");
    let second = LeaderElector::new(leases.clone(), &name, "replica-b");

    tokio::time::timeout(Duration::from_secs(10), first.acquire())
        .await
        .expect("first replica leads");
    // The leader keeps renewing; the second replica must not get in meanwhile.
    let holding = tokio::spawn(async move {
        let _ = first.hold().await;
        first
    });
    let attempt = tokio::time::timeout(Duration::from_secs(6), second.acquire()).await;
    assert!(
        attempt.is_err(),
        "second replica acquired a lease that is held and renewed"
    );
    let lease = leases.get(&name).await.expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("replica-a")
    );

    // The leader steps down (shutdown): the lease passes without waiting for expiry.
    holding.abort();
    let first = LeaderElector::new(leases.clone(), &name, "replica-a");
    first.release().await;
    tokio::time::timeout(Duration::from_secs(10), second.acquire())
        .await
        .expect("second replica takes over");
    let lease = leases.get(&name).await.expect("lease").spec.expect("spec");
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(lease.lease_transitions, Some(1));
}

const LEASE: Duration = Duration::from_secs(6);
const RENEW_DEADLINE: Duration = Duration::from_secs(4);
const RETRY: Duration = Duration::from_secs(1);
/// Scheduling slack allowed on top of the renew deadline.
const SLACK: Duration = Duration::from_millis(300);

/// Replica A reaches the API server through a proxy that is then frozen (no
/// byte passes, no socket closes, so requests hang rather than fail). A must
/// stop its leader work within the renew deadline of its last renewal, and
/// before B, which watches the lease over a direct connection, takes over.
#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_steps_down_before_another_takes_over() {
    let ns = TestNamespace::new().await;
    let name = unique("lease-");
    let (proxy, client_a) = client_through_proxy().await;
    let a =
        Arc::new(
            LeaderElector::new(Api::namespaced(client_a, &ns.name), &name, "replica-a")
                .with_timing(LEASE, RENEW_DEADLINE, RETRY),
        );
    let b = Arc::new(
        LeaderElector::new(
            Api::namespaced(operator_client().await, &ns.name),
            &name,
            "replica-b",
        )
        .with_timing(LEASE, RENEW_DEADLINE, RETRY),
    );

    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), a.acquire())
        .await
        .expect("replica A leads");

    // A "leads" the way main.rs does: its work races `hold()` in a select and
    // is dropped the moment `hold()` returns. The work stamps the time it last
    // ran.
    let last_work = Arc::new(Mutex::new(Instant::now()));
    let a_term = {
        let (a, last_work) = (a.clone(), last_work.clone());
        tokio::spawn(async move {
            let work = async {
                loop {
                    *last_work.lock().expect("lock") = Instant::now();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let down = tokio::select! {
                down = a.hold() => down,
                () = work => unreachable!("the work loop never ends"),
            };
            (down, Instant::now())
        })
    };
    let b_term = {
        let b = b.clone();
        tokio::spawn(async move {
            b.acquire().await;
            (b.last_renewal().expect("B leads"), Instant::now())
        })
    };

    // A renews; B watches and must not get in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!a_term.is_finished(), "A stepped down while connected");
    assert!(!b_term.is_finished(), "B acquired a lease A renews");

    let frozen = Instant::now();
    proxy.freeze();
    let since = |t: Instant| -> String {
        if t >= frozen {
            format!("+{:?}", t - frozen)
        } else {
            format!("-{:?}", frozen - t)
        }
    };

    let (down, a_stopped) = tokio::time::timeout(RENEW_DEADLINE + Duration::from_secs(5), a_term)
        .await
        .expect("A steps down while cut off")
        .expect("A's task");
    let a_renewed = down.last_renewal.expect("A renewed at least once");
    let a_last_work = *last_work.lock().expect("lock");
    assert_eq!(down.reason, StepDownReason::RenewDeadline);
    assert!(
        a_stopped - a_renewed <= RENEW_DEADLINE + SLACK,
        "A stopped {:?} after its last renewal (renewed {}, stopped {}); renew deadline {RENEW_DEADLINE:?}",
        a_stopped - a_renewed,
        since(a_renewed),
        since(a_stopped),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        *last_work.lock().expect("lock"),
        a_last_work,
        "A's work kept running after it stepped down"
    );

    let (b_started, b_acquired) = tokio::time::timeout(LEASE + Duration::from_secs(10), b_term)
        .await
        .expect("B takes over once A's lease expired")
        .expect("B's task");
    let timings = format!(
        "relative to the freeze ({:?} after A first acquired): A last renewed {}, \
         A's work last ran {}, A stepped down {}, B's winning attempt started {}, \
         B acquired {}",
        frozen - t0,
        since(a_renewed),
        since(a_last_work),
        since(a_stopped),
        since(b_started),
        since(b_acquired),
    );
    eprintln!("{timings}");
    assert!(
        a_last_work < b_started && a_stopped < b_started,
        "two leaders at once: {timings}"
    );
    // The documented bound: B takes over no earlier than a lease duration
    // after A's last renewal began, A stops within the renew deadline of it.
    assert!(
        b_started - a_renewed >= LEASE,
        "B took over less than a lease duration after A's last renewal: {timings}"
    );

    let lease = Api::<Lease>::namespaced(operator_client().await, &ns.name)
        .get(&name)
        .await
        .expect("lease")
        .spec
        .expect("spec");
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(lease.lease_transitions, Some(1));
    drop(proxy);
}

/// A client with the operator's credentials whose connections go through a
/// [`FreezableProxy`] to the stack's API server. TLS passes through untouched
/// (the proxy copies bytes), so the server's certificate still verifies.
async fn client_through_proxy() -> (FreezableProxy, kube::Client) {
    let path = env("STRATA_OPERATOR_KUBECONFIG");
    let kubeconfig =
        Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("read kubeconfig {path}: {e}"));
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("valid kubeconfig");
    let host = config
        .cluster_url
        .host()
        .expect("API server host")
        .to_string();
    let port = config.cluster_url.port_u16().unwrap_or(443);
    let upstream = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .expect("resolve the API server")
        .next()
        .expect("an address for the API server");
    let proxy = FreezableProxy::start(upstream).await;
    if host != "127.0.0.1" {
        config.tls_server_name = Some(host);
    }
    config.cluster_url = format!("https://{}", proxy.addr)
        .parse()
        .expect("proxy url");
    // No read timeout, as kube's default: stepping down must not depend on one.
    config.read_timeout = None;
    let client = kube::Client::try_from(config).expect("kube client");
    (proxy, client)
}

/// A TCP proxy that can be frozen: it then stops forwarding in both
/// directions (and stops connecting new clients upstream) without closing any
/// socket, like a network path that silently drops everything.
struct FreezableProxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (frozen, watching) = watch::channel(false);
        let task = tokio::spawn(async move {
            // Dropped with the task: aborts every connection, closing its sockets.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let mut watching = watching.clone();
                connections.spawn(async move {
                    if watching.wait_for(|f| !*f).await.is_err() {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, watching.clone()),
                        pump(server_read, client_write, watching),
                    );
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self { addr, frozen, task }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Bytes read just before the freeze are held, not delivered.
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
