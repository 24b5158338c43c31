// Command strata-node runs the node side of the local Kubernetes cluster
// (hack/lib/node.sh): the upstream kubelet, kube-proxy and kube-scheduler
// commands, compiled from the same module and build cache as
// strata-controlplane, one per process:
//
//	strata-node kubelet        --config ... --kubeconfig ...
//	strata-node kube-proxy     --config ...
//	strata-node kube-scheduler --kubeconfig ... --leader-elect=false
//	strata-node cri-reset      --endpoint unix:///path/containerd.sock
//
// Each subcommand is the upstream command as its own main package builds it
// (same flags, same logging and metrics registration); running them as
// separate processes keeps their process-global state (flags, feature gates,
// metrics registries) apart, as on a real node.
//
// cri-reset stops and removes every pod sandbox through the CRI, as the
// kubelet does when it deletes a pod, so that the CNI plugins tear down what
// they set up on the host (veth pairs, network namespaces, IP reservations,
// masquerade rules) before containerd stops.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as the upstream mains
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	kubeproxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: strata-node kubelet|kube-proxy|kube-scheduler|cri-reset [flags]")
		os.Exit(2)
	}
	var cmd *cobra.Command
	switch os.Args[1] {
	case "kubelet":
		cmd = kubelet.NewKubeletCommand(context.Background())
	case "kube-proxy":
		cmd = kubeproxy.NewProxyCommand()
	case "kube-scheduler":
		cmd = scheduler.NewSchedulerCommand()
	case "cri-reset":
		if err := criReset(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "strata-node cri-reset: %v\n", err)
			os.Exit(1)
		}
		return
	default:
		fmt.Fprintf(os.Stderr, "strata-node: unknown component %q (kubelet, kube-proxy, kube-scheduler, cri-reset)\n", os.Args[1])
		os.Exit(2)
	}
	cmd.SetArgs(os.Args[2:])
	os.Exit(cli.Run(cmd))
}
