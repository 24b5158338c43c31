package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/rest"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

type apiserverOptions struct {
	stateDir   string
	securePort int
	etcdURL    string
	pki        *pki
	extraArgs  []string
	// nodeIP, when set, makes the API server usable by a kubelet and by pods:
	// see args.
	nodeIP string
}

// apiserverArgs is the kube-apiserver command line we run with. It follows
// envtest's defaults (controller-runtime's test control plane), with RBAC
// authorization and client-certificate authentication against our CA.
func (o apiserverOptions) args() []string {
	issuer := fmt.Sprintf("https://127.0.0.1:%d", o.securePort)
	args := []string{
		"--etcd-servers=" + o.etcdURL,
		"--cert-dir=" + filepath.Join(o.stateDir, "apiserver-certs"),
		"--tls-cert-file=" + o.pki.ServingCertFile(),
		"--tls-private-key-file=" + o.pki.ServingKeyFile(),
		"--client-ca-file=" + o.pki.CACertFile(),
		fmt.Sprintf("--secure-port=%d", o.securePort),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		"--service-account-issuer=" + issuer,
		"--service-account-key-file=" + o.pki.SAPubFile(),
		"--service-account-signing-key-file=" + o.pki.SAKeyFile(),
	}
	if o.nodeIP == "" {
		args = append(args,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--authorization-mode=RBAC",
			// No service-account token controller runs here, so the ServiceAccount
			// admission plugin would reject pods (same as envtest).
			"--disable-admission-plugins=ServiceAccount",
			// The "kubernetes" Service endpoints would point at 127.0.0.1, which
			// Endpoints validation rejects; nothing in-cluster can use them anyway.
			"--endpoint-reconciler-type=none",
		)
	} else {
		// A cluster with a node (hack/lib/node.sh): pods reach the API server
		// through the "kubernetes" Service, whose endpoint is the advertise
		// address (so the server must listen beyond loopback); pods get
		// service-account tokens (ServiceAccount admission, kubelet's
		// TokenRequest); kubectl logs/exec reach the kubelet at its
		// InternalIP with a client certificate the kubelet trusts; kubelets
		// are limited to their own node's objects (Node authorizer,
		// NodeRestriction).
		args = append(args,
			"--bind-address=0.0.0.0",
			"--advertise-address="+o.nodeIP,
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--endpoint-reconciler-type=lease",
			"--kubelet-preferred-address-types=InternalIP",
			"--kubelet-client-certificate="+o.pki.path("apiserver-kubelet-client.crt"),
			"--kubelet-client-key="+o.pki.path("apiserver-kubelet-client.key"),
		)
	}
	// Extra args come last so they override the defaults above.
	return append(args, o.extraArgs...)
}

// runAPIServer builds kube-apiserver options exactly as the kube-apiserver
// command does (flag parsing, completion, validation) and runs it until ctx
// is cancelled.
func runAPIServer(ctx context.Context, o apiserverOptions) error {
	s := options.NewServerRunOptions()
	featureGate := s.GenericServerRunOptions.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)

	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	args := o.args()
	fmt.Fprintf(os.Stderr, "strata-controlplane: kube-apiserver %s\n", strings.Join(args, " "))
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("kube-apiserver flags: %w", err)
	}
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	// kube-apiserver loopback clients should not log self-issued warnings.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	if err := logsapi.ValidateAndApply(s.Logs, featureGate); err != nil {
		return err
	}

	completed, err := s.Complete(ctx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return utilerrors.NewAggregate(errs)
	}
	featureGate.(featuregate.MutableFeatureGate).AddMetrics()
	s.GenericServerRunOptions.ComponentGlobalsRegistry.AddMetrics()
	return app.Run(ctx, completed)
}
