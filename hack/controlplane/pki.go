package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Identities issued by the local CA. The lead engineer binds RBAC to
// operatorUser; adminGroup is the built-in superuser group.
const (
	adminUser       = "strata-admin"
	adminGroup      = "system:masters"
	operatorUser    = "strata-operator"
	controllersUser = "strata-controlplane-controllers"
	clusterName     = "strata-local"
	certValidity    = 10 * 365 * 24 * time.Hour
)

// pki holds the paths of everything the control plane needs on disk.
type pki struct {
	dir string

	caCert *x509.Certificate
	caKey  crypto.Signer
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

func (p *pki) CACertFile() string      { return p.path("ca.crt") }
func (p *pki) ServingCertFile() string { return p.path("apiserver.crt") }
func (p *pki) ServingKeyFile() string  { return p.path("apiserver.key") }
func (p *pki) SAKeyFile() string       { return p.path("sa.key") }
func (p *pki) SAPubFile() string       { return p.path("sa.pub") }

// ensurePKI loads the CA and leaf certificates from dir, creating whatever is
// missing. Existing files are reused so restarts keep the same identities and
// service-account signing key.
//
// extraIPs are added to the serving certificate (a node's address); a
// serving certificate without one of them is issued again. nodeName, when
// set, adds the client certificates of a node: its kubelet
// (system:node:<nodeName> in system:nodes, for the Node authorizer),
// kube-proxy and kube-scheduler (the users upstream's bootstrap RBAC binds),
// and the API server's own client certificate towards kubelets.
func ensurePKI(dir string, extraIPs []net.IP, nodeName string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{dir: dir}
	if err := p.ensureCA(); err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	serving := leafSpec{
		name:       "apiserver",
		commonName: "strata-kube-apiserver",
		usages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		dnsNames: []string{
			"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local",
		},
		ips: append([]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.0.0.1")}, extraIPs...),
	}
	if err := p.dropLeafWithoutIPs(serving.name, extraIPs); err != nil {
		return nil, err
	}
	clients := []leafSpec{
		{name: "admin", commonName: adminUser, orgs: []string{adminGroup}},
		{name: "operator", commonName: operatorUser},
		{name: "controllers", commonName: controllersUser, orgs: []string{adminGroup}},
	}
	if nodeName != "" {
		clients = append(clients,
			leafSpec{name: "kubelet", commonName: "system:node:" + nodeName, orgs: []string{"system:nodes"}},
			leafSpec{name: "kube-proxy", commonName: "system:kube-proxy"},
			leafSpec{name: "kube-scheduler", commonName: "system:kube-scheduler"},
			leafSpec{name: "apiserver-kubelet-client", commonName: "kube-apiserver-kubelet-client", orgs: []string{adminGroup}},
		)
	}
	for _, s := range append([]leafSpec{serving}, clients...) {
		if err := p.ensureLeaf(s); err != nil {
			return nil, fmt.Errorf("%s certificate: %w", s.name, err)
		}
	}
	if err := p.ensureSAKey(); err != nil {
		return nil, fmt.Errorf("service account key: %w", err)
	}
	return p, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func (p *pki) ensureCA() error {
	certFile, keyFile := p.CACertFile(), p.path("ca.key")
	if exists(certFile) && exists(keyFile) {
		cert, err := readCert(certFile)
		if err != nil {
			return err
		}
		key, err := readKey(keyFile)
		if err != nil {
			return err
		}
		p.caCert, p.caKey = cert, key
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: "strata-local-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	if err := writeKey(keyFile, key); err != nil {
		return err
	}
	if err := writeCert(certFile, der); err != nil {
		return err
	}
	p.caCert, p.caKey = cert, key
	return nil
}

// dropLeafWithoutIPs removes the named certificate when it lacks one of ips,
// so that ensureLeaf issues it again.
func (p *pki) dropLeafWithoutIPs(name string, ips []net.IP) error {
	certFile := p.path(name + ".crt")
	if len(ips) == 0 || !exists(certFile) {
		return nil
	}
	cert, err := readCert(certFile)
	if err != nil {
		return err
	}
	for _, want := range ips {
		found := false
		for _, have := range cert.IPAddresses {
			found = found || have.Equal(want)
		}
		if !found {
			return os.Remove(certFile)
		}
	}
	return nil
}

type leafSpec struct {
	name       string
	commonName string
	orgs       []string
	usages     []x509.ExtKeyUsage
	dnsNames   []string
	ips        []net.IP
}

func (p *pki) ensureLeaf(s leafSpec) error {
	certFile, keyFile := p.path(s.name+".crt"), p.path(s.name+".key")
	if exists(certFile) && exists(keyFile) {
		return nil
	}
	usages := s.usages
	if usages == nil {
		usages = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: s.commonName, Organization: s.orgs},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  usages,
		DNSNames:     s.dnsNames,
		IPAddresses:  s.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, key.Public(), p.caKey)
	if err != nil {
		return err
	}
	if err := writeKey(keyFile, key); err != nil {
		return err
	}
	return writeCert(certFile, der)
}

func (p *pki) ensureSAKey() error {
	if exists(p.SAKeyFile()) && exists(p.SAPubFile()) {
		return nil
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	if err := writeKey(p.SAKeyFile(), key); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	return os.WriteFile(p.SAPubFile(), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err)
	}
	return n
}

func writeCert(path string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return x509.ParseCertificate(block.Bytes)
}

func readKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM key", path)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New(path + ": not a signing key")
	}
	return signer, nil
}

// restConfig returns a client config for the named client certificate.
func (p *pki) restConfig(server, name string) *rest.Config {
	return &rest.Config{
		Host: server,
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   p.CACertFile(),
			CertFile: p.path(name + ".crt"),
			KeyFile:  p.path(name + ".key"),
		},
	}
}

// writeKubeconfig writes a self-contained kubeconfig (certificates embedded)
// for the named client certificate.
func (p *pki) writeKubeconfig(path, server, name, user string) error {
	ca, err := os.ReadFile(p.CACertFile())
	if err != nil {
		return err
	}
	cert, err := os.ReadFile(p.path(name + ".crt"))
	if err != nil {
		return err
	}
	key, err := os.ReadFile(p.path(name + ".key"))
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[clusterName] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts[clusterName] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = clusterName
	tmp := path + ".tmp"
	if err := clientcmd.WriteToFile(*cfg, tmp); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
