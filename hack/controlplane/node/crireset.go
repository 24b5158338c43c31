package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// criReset stops and removes all pod sandboxes (and so their containers) of
// the CRI runtime at --endpoint. Stopping a sandbox runs the CNI DEL that
// releases its network; removing it deletes its containers.
func criReset(args []string) error {
	fs := pflag.NewFlagSet("cri-reset", pflag.ContinueOnError)
	endpoint := fs.String("endpoint", "", "CRI endpoint, unix:///path/to/containerd.sock")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !strings.HasPrefix(*endpoint, "unix://") {
		return errors.New("--endpoint unix:///path is required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	conn, err := grpc.NewClient("passthrough:///"+strings.TrimPrefix(*endpoint, "unix://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, path string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}))
	if err != nil {
		return err
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	list, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("listing pod sandboxes: %w", err)
	}
	var errs []error
	for _, sb := range list.Items {
		name := sb.Id
		if sb.Metadata != nil {
			name = sb.Metadata.Namespace + "/" + sb.Metadata.Name
		}
		if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stopping %s: %w", name, err))
			continue
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", name, err))
			continue
		}
		fmt.Printf("removed pod sandbox %s\n", name)
	}
	return errors.Join(errs...)
}
