package main

import (
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

type etcdOptions struct {
	dataDir    string
	clientPort int
	peerPort   int
	logLevel   string
	noFsync    bool
}

func (o etcdOptions) clientURL() string { return fmt.Sprintf("http://127.0.0.1:%d", o.clientPort) }

// startEtcd starts a single-member embedded etcd on loopback (plain HTTP, the
// same trade-off envtest makes) and waits until it serves requests.
func startEtcd(o etcdOptions) (*embed.Etcd, error) {
	clientURL, err := url.Parse(o.clientURL())
	if err != nil {
		return nil, err
	}
	peerURL, err := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", o.peerPort))
	if err != nil {
		return nil, err
	}

	cfg := embed.NewConfig()
	cfg.Name = "strata"
	cfg.Dir = o.dataDir
	cfg.ListenClientUrls = []url.URL{*clientURL}
	cfg.AdvertiseClientUrls = []url.URL{*clientURL}
	cfg.ListenPeerUrls = []url.URL{*peerURL}
	cfg.AdvertisePeerUrls = []url.URL{*peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.InitialClusterToken = "strata-local"
	cfg.LogLevel = o.logLevel
	cfg.LogOutputs = []string{"stderr"}
	// kube-apiserver compacts etcd itself every 5 minutes; periodic
	// compaction is only a backstop.
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = "1h"
	cfg.QuotaBackendBytes = 2 << 30
	cfg.UnsafeNoFsync = o.noFsync
	// NewConfig leaves this at 0, which logs every request as "expensive".
	cfg.WarningUnaryRequestDuration = embed.DefaultWarningUnaryRequestDuration

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd failed while starting: %w", err)
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("etcd did not become ready within 60s")
	}
}
