// Command strata-controlplane runs a real, single-process Kubernetes control
// plane for local runs and tests: embedded etcd, the upstream kube-apiserver
// (k8s.io/kubernetes/cmd/kube-apiserver/app) and the garbage-collector and
// namespace controllers from kube-controller-manager. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "strata-controlplane: %v\n", err)
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "strata-controlplane: "+format+"\n", args...)
}

func run() error {
	installQuietGRPCLogger()
	var (
		stateDir      string
		securePort    int
		etcdPort      int
		etcdPeerPort  int
		etcdLogLevel  string
		etcdFsync     bool
		gcSyncPeriod  time.Duration
		readyTimeout  time.Duration
		apiserverArgs []string
		nodeIP        string
		nodeName      string
	)
	fs := pflag.NewFlagSet("strata-controlplane", pflag.ContinueOnError)
	fs.StringVar(&stateDir, "state-dir", "", "directory for etcd data, certificates and kubeconfigs (required)")
	fs.IntVar(&securePort, "secure-port", 56443, "kube-apiserver HTTPS port on 127.0.0.1")
	fs.IntVar(&etcdPort, "etcd-port", 52379, "etcd client port on 127.0.0.1")
	fs.IntVar(&etcdPeerPort, "etcd-peer-port", 0, "etcd peer port on 127.0.0.1 (default: etcd-port+1)")
	fs.StringVar(&etcdLogLevel, "etcd-log-level", "warn", "etcd log level (debug, info, warn, error)")
	fs.BoolVar(&etcdFsync, "etcd-fsync", false, "let etcd fsync its WAL and database (off by default: data survives a clean stop or a crash of this process, not a machine crash)")
	fs.DurationVar(&gcSyncPeriod, "gc-sync-period", 5*time.Second, "how often the garbage collector rediscovers resource types (bounds how long a new CRD waits for GC coverage)")
	fs.DurationVar(&readyTimeout, "ready-timeout", 180*time.Second, "give up if the API server is not ready within this time")
	fs.StringArrayVar(&apiserverArgs, "apiserver-arg", nil, "extra kube-apiserver flag, e.g. --apiserver-arg=--v=2 (repeatable; overrides the defaults)")
	fs.StringVar(&nodeIP, "node-ip", "", "run for a node at this address (hack/lib/node.sh): the API server listens on all addresses and advertises this one, pods get service-account tokens, and the controllers that Deployments and Services need run too")
	fs.StringVar(&nodeName, "node-name", "strata-node", "with --node-ip: the node's name (its kubelet's client certificate is system:node:<name>)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	if stateDir == "" {
		return errors.New("--state-dir is required")
	}
	if etcdPeerPort == 0 {
		etcdPeerPort = etcdPort + 1
	}
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return err
	}
	readyFile := filepath.Join(stateDir, "ready")
	_ = os.Remove(readyFile)
	defer os.Remove(readyFile)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second signal now kills the process the default way
	}()

	// Certificates and kubeconfigs.
	var extraIPs []net.IP
	if nodeIP != "" {
		ip := net.ParseIP(nodeIP)
		if ip == nil {
			return fmt.Errorf("--node-ip %q is not an IP address", nodeIP)
		}
		extraIPs = append(extraIPs, ip)
	} else {
		nodeName = ""
	}
	p, err := ensurePKI(filepath.Join(stateDir, "pki"), extraIPs, nodeName)
	if err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", securePort)
	kubeconfigs := []struct{ file, cert, user string }{
		{"admin.kubeconfig", "admin", adminUser},
		{"operator.kubeconfig", "operator", operatorUser},
	}
	if nodeName != "" {
		kubeconfigs = append(kubeconfigs,
			struct{ file, cert, user string }{"kubelet.kubeconfig", "kubelet", "system:node:" + nodeName},
			struct{ file, cert, user string }{"kube-proxy.kubeconfig", "kube-proxy", "system:kube-proxy"},
			struct{ file, cert, user string }{"kube-scheduler.kubeconfig", "kube-scheduler", "system:kube-scheduler"},
		)
	}
	for _, kc := range kubeconfigs {
		if err := p.writeKubeconfig(filepath.Join(stateDir, kc.file), server, kc.cert, kc.user); err != nil {
			return fmt.Errorf("writing %s: %w", kc.file, err)
		}
	}

	// etcd.
	etcdOpts := etcdOptions{
		dataDir:    filepath.Join(stateDir, "etcd"),
		clientPort: etcdPort,
		peerPort:   etcdPeerPort,
		logLevel:   etcdLogLevel,
		noFsync:    !etcdFsync,
	}
	logf("starting etcd on %s (data %s)", etcdOpts.clientURL(), etcdOpts.dataDir)
	etcd, err := startEtcd(etcdOpts)
	if err != nil {
		return err
	}
	defer func() {
		logf("stopping etcd")
		etcd.Close()
	}()

	// kube-apiserver.
	apiCtx, cancelAPI := context.WithCancel(ctx)
	defer cancelAPI()
	apiDone := make(chan error, 1)
	go func() {
		apiDone <- runAPIServer(apiCtx, apiserverOptions{
			stateDir:   stateDir,
			securePort: securePort,
			etcdURL:    etcdOpts.clientURL(),
			pki:        p,
			extraArgs:  apiserverArgs,
			nodeIP:     nodeIP,
		})
	}()
	// On return: stop the API server and wait for it before etcd goes away.
	defer func() {
		cancelAPI()
		select {
		case err := <-apiDone:
			if err != nil {
				logf("kube-apiserver stopped: %v", err)
			} else {
				logf("kube-apiserver stopped")
			}
		case <-time.After(60 * time.Second):
			logf("kube-apiserver did not stop within 60s")
		}
	}()

	ctrlCfg := p.restConfig(server, "controllers")
	if err := waitReady(ctx, ctrlCfg, readyTimeout, apiDone, etcd.Err()); err != nil {
		return err
	}
	logf("kube-apiserver is ready at %s", server)

	// Controllers.
	ctrlCtx, cancelCtrl := context.WithCancel(ctx)
	defer cancelCtrl()
	ctrlOpts := controllerOptions{gcSyncPeriod: gcSyncPeriod, gcWorkers: 20, nsWorkers: 10, workload: nodeIP != ""}
	if ctrlOpts.workload {
		if ctrlOpts.rootCA, err = os.ReadFile(p.CACertFile()); err != nil {
			return err
		}
	}
	ctrls, err := startControllers(ctrlCtx, ctrlCfg, ctrlOpts)
	if err != nil {
		return err
	}
	defer func() {
		cancelCtrl()
		done := make(chan struct{})
		go func() { ctrls.wg.Wait(); close(done) }()
		select {
		case <-done:
			logf("controllers stopped")
		case <-time.After(15 * time.Second):
			logf("controllers did not stop within 15s")
		}
	}()
	if ctrls.waitGCSynced(ctx, 60*time.Second) {
		logf("garbage collector synced")
	} else if ctx.Err() == nil {
		logf("warning: garbage collector not fully synced after 60s, continuing")
	}

	if ctx.Err() == nil {
		if err := os.WriteFile(readyFile, []byte(server+"\n"), 0o644); err != nil {
			return err
		}
		logf("ready: export KUBECONFIG=%s", filepath.Join(stateDir, "admin.kubeconfig"))
	}

	select {
	case <-ctx.Done():
		logf("signal received, shutting down")
		_ = os.Remove(readyFile)
		return nil
	case err := <-apiDone:
		apiDone <- err // let the deferred wait see it
		return fmt.Errorf("kube-apiserver exited: %v", err)
	case err := <-etcd.Err():
		return fmt.Errorf("etcd failed: %w", err)
	}
}

// waitReady polls /readyz until it answers "ok", the API server goroutine
// fails, etcd fails, or the timeout passes.
func waitReady(ctx context.Context, cfg *rest.Config, timeout time.Duration, apiDone chan error, etcdErr <-chan error) error {
	c := rest.CopyConfig(cfg)
	c.Timeout = 5 * time.Second
	client, err := kubernetes.NewForConfig(c)
	if err != nil {
		return err
	}
	deadline := time.After(timeout)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-apiDone:
			apiDone <- err
			return fmt.Errorf("kube-apiserver exited before it was ready: %v", err)
		case err := <-etcdErr:
			return fmt.Errorf("etcd failed: %w", err)
		case <-deadline:
			return fmt.Errorf("kube-apiserver not ready after %s: %v", timeout, last)
		case <-tick.C:
			body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
			if err == nil && string(body) == "ok" {
				return nil
			}
			if err != nil {
				last = err
			} else {
				last = fmt.Errorf("/readyz: %s", body)
			}
		}
	}
}
