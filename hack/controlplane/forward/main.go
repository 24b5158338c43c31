// Command strata-forward relays TCP connections: for each --map
// LISTEN=TARGET it accepts on LISTEN and connects each client to TARGET.
// The stack's services listen on 127.0.0.1 only, which pods cannot reach:
// hack/lib/node.sh maps them onto the pod network's gateway address, and
// tests/e2e/kind.sh onto the kind network's gateway. Standard library and
// pflag only, so it builds in seconds.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

func main() {
	if err := forward(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "strata-forward: %v\n", err)
		os.Exit(1)
	}
}

func forward(args []string) error {
	fs := pflag.NewFlagSet("strata-forward", pflag.ContinueOnError)
	maps := fs.StringArray("map", nil, "LISTEN=TARGET, e.g. 10.244.0.1:55432=127.0.0.1:55432 (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(*maps) == 0 {
		return errors.New("at least one --map LISTEN=TARGET is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var wg sync.WaitGroup
	var listeners []net.Listener
	for _, m := range *maps {
		listen, target, ok := strings.Cut(m, "=")
		if !ok {
			return fmt.Errorf("--map %q: want LISTEN=TARGET", m)
		}
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return err
		}
		listeners = append(listeners, ln)
		fmt.Fprintf(os.Stderr, "strata-forward: %s -> %s\n", listen, target)
		wg.Go(func() { serve(ctx, ln, target) })
	}
	<-ctx.Done()
	for _, l := range listeners {
		l.Close()
	}
	wg.Wait()
	return nil
}

func serve(ctx context.Context, ln net.Listener, target string) {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		conns.Go(func() { relay(ctx, c, target) })
	}
}

func relay(ctx context.Context, in net.Conn, target string) {
	defer in.Close()
	d := net.Dialer{Timeout: 5 * time.Second}
	out, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		fmt.Fprintf(os.Stderr, "strata-forward: %s: %v\n", target, err)
		return
	}
	defer out.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(out, in)
	go pipe(in, out)
	select {
	case <-done:
		<-done
	case <-ctx.Done():
	}
}
