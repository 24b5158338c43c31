package main

import (
	"fmt"

	"google.golang.org/grpc/grpclog"
	"k8s.io/klog/v2"
)

// quietGRPCLogger replaces the klog bridge that k8s.io/apiserver installs for
// gRPC. kube-apiserver opens and cancels many short-lived etcd connections
// while it starts, and gRPC reports each one as a warning ("createTransport
// failed ... operation was canceled"); with etcd in the same process that is
// only noise. Warnings show at -v=2 and above; errors always.
type quietGRPCLogger struct{}

const grpcLogDepth = 2

func (quietGRPCLogger) Info(args ...any) {
	if v := klog.V(5); v.Enabled() {
		v.InfoSDepth(grpcLogDepth, fmt.Sprint(args...))
	}
}
func (l quietGRPCLogger) Infoln(args ...any) { l.Info(fmt.Sprintln(args...)) }
func (l quietGRPCLogger) Infof(format string, args ...any) {
	l.Info(fmt.Sprintf(format, args...))
}
func (quietGRPCLogger) Warning(args ...any) {
	if klog.V(2).Enabled() {
		klog.WarningDepth(grpcLogDepth, args...)
	}
}
func (l quietGRPCLogger) Warningln(args ...any) { l.Warning(fmt.Sprintln(args...)) }
func (l quietGRPCLogger) Warningf(format string, args ...any) {
	l.Warning(fmt.Sprintf(format, args...))
}
func (quietGRPCLogger) Error(args ...any)   { klog.ErrorDepth(grpcLogDepth, args...) }
func (quietGRPCLogger) Errorln(args ...any) { klog.ErrorDepth(grpcLogDepth, fmt.Sprintln(args...)) }
func (quietGRPCLogger) Errorf(f string, a ...any) {
	klog.ErrorDepth(grpcLogDepth, fmt.Sprintf(f, a...))
}
func (quietGRPCLogger) Fatal(args ...any)   { klog.FatalDepth(grpcLogDepth, args...) }
func (quietGRPCLogger) Fatalln(args ...any) { klog.FatalDepth(grpcLogDepth, fmt.Sprintln(args...)) }
func (quietGRPCLogger) Fatalf(f string, a ...any) {
	klog.FatalDepth(grpcLogDepth, fmt.Sprintf(f, a...))
}
func (quietGRPCLogger) V(l int) bool { return klog.V(klog.Level(l)).Enabled() }

// installQuietGRPCLogger must run before any gRPC client or server exists.
func installQuietGRPCLogger() { grpclog.SetLoggerV2(quietGRPCLogger{}) }
