package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/informers"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/controller-manager/pkg/informerfactory"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/controller/clusterroleaggregation"
	"k8s.io/kubernetes/pkg/controller/garbagecollector"
	namespacecontroller "k8s.io/kubernetes/pkg/controller/namespace"
	serviceaccountcontroller "k8s.io/kubernetes/pkg/controller/serviceaccount"
)

type controllerOptions struct {
	gcSyncPeriod time.Duration
	gcWorkers    int
	nsWorkers    int
}

// runningControllers is what startControllers hands back: a way to wait for
// the garbage collector's first graph sync and for all goroutines to end.
type runningControllers struct {
	gc *garbagecollector.GarbageCollector
	wg sync.WaitGroup
}

// waitGCSynced waits until every GC resource monitor has synced.
func (r *runningControllers) waitGCSynced(ctx context.Context, timeout time.Duration) bool {
	logger := klog.FromContext(ctx)
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		return r.gc.IsSynced(logger), nil
	})
	return err == nil
}

// trimManagedFields mirrors kube-controller-manager's informer transform: the
// controllers never read managedFields, so don't keep them in memory.
func trimManagedFields(obj interface{}) (interface{}, error) {
	if accessor, err := meta.Accessor(obj); err == nil && accessor.GetManagedFields() != nil {
		accessor.SetManagedFields(nil)
	}
	return obj, nil
}

// startControllers runs the kube-controller-manager controllers that matter
// to an API-only cluster, wired the way kube-controller-manager wires them
// (cmd/kube-controller-manager/app/core.go and rbac.go):
//   - garbagecollector: ownerReferences cascading deletion (background and
//     foreground) and orphaning;
//   - namespace: empties and finalizes namespaces being deleted;
//   - clusterrole-aggregation: fills aggregated ClusterRoles (admin, edit,
//     view, and any role with an aggregationRule);
//   - serviceaccount: creates the "default" ServiceAccount in each namespace.
//
// They stop when ctx is cancelled.
func startControllers(ctx context.Context, base *rest.Config, o controllerOptions) (*runningControllers, error) {
	cfg := rest.CopyConfig(base)
	cfg.QPS, cfg.Burst = 100, 200

	clientFor := func(name string, qpsFactor float32) (*rest.Config, clientset.Interface, error) {
		c := rest.AddUserAgent(rest.CopyConfig(cfg), name)
		c.QPS *= qpsFactor
		cs, err := clientset.NewForConfig(c)
		return c, cs, err
	}

	infCfg, infClient, err := clientFor("shared-informers", 1)
	if err != nil {
		return nil, err
	}
	metadataClient, err := metadata.NewForConfig(infCfg)
	if err != nil {
		return nil, err
	}
	const resync = 12 * time.Hour
	sharedInformers := informers.NewSharedInformerFactoryWithOptions(infClient, resync, informers.WithTransform(trimManagedFields))
	metadataInformers := metadatainformer.NewSharedInformerFactoryWithOptions(metadataClient, resync, metadatainformer.WithTransform(trimManagedFields))
	objectOrMetadataInformers := informerfactory.NewInformerFactory(sharedInformers, metadataInformers)

	discoClient, err := discovery.NewDiscoveryClientForConfig(rest.AddUserAgent(rest.CopyConfig(cfg), "controller-discovery"))
	if err != nil {
		return nil, err
	}
	restMapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discoClient))
	informersStarted := make(chan struct{})

	// Garbage collector.
	gcCfg, gcClient, err := clientFor("generic-garbage-collector", 2)
	if err != nil {
		return nil, err
	}
	gcMetadata, err := metadata.NewForConfig(gcCfg)
	if err != nil {
		return nil, err
	}
	// The GC's own discovery client must not be the one behind restMapper.
	gcDiscovery, err := discovery.NewDiscoveryClientForConfig(gcCfg)
	if err != nil {
		return nil, err
	}
	graphBuilder := garbagecollector.NewDependencyGraphBuilder(ctx, metadataClient, restMapper,
		garbagecollector.DefaultIgnoredResources(), objectOrMetadataInformers, informersStarted)
	gc, err := garbagecollector.NewComposedGarbageCollector(ctx, gcClient, gcMetadata, restMapper, graphBuilder)
	if err != nil {
		return nil, fmt.Errorf("garbage collector: %w", err)
	}

	// Namespace controller: chatty, so it gets a much larger rate limit.
	nsCfg, nsClient, err := clientFor("namespace-controller", 20)
	if err != nil {
		return nil, err
	}
	nsCfg.Burst *= 100
	nsMetadata, err := metadata.NewForConfig(nsCfg)
	if err != nil {
		return nil, err
	}
	nsController := namespacecontroller.NewNamespaceController(ctx, nsClient, nsMetadata,
		nsClient.Discovery().ServerPreferredNamespacedResources,
		sharedInformers.Core().V1().Namespaces(), 5*time.Minute, v1.FinalizerKubernetes)

	crClient, err := clientset.NewForConfig(rest.AddUserAgent(rest.CopyConfig(cfg), "clusterrole-aggregation-controller"))
	if err != nil {
		return nil, err
	}
	roleAggregation := clusterroleaggregation.NewClusterRoleAggregation(
		sharedInformers.Rbac().V1().ClusterRoles(), crClient.RbacV1())

	saClient, err := clientset.NewForConfig(rest.AddUserAgent(rest.CopyConfig(cfg), "service-account-controller"))
	if err != nil {
		return nil, err
	}
	saController, err := serviceaccountcontroller.NewServiceAccountsController(klog.FromContext(ctx),
		sharedInformers.Core().V1().ServiceAccounts(), sharedInformers.Core().V1().Namespaces(),
		saClient, serviceaccountcontroller.DefaultServiceAccountsControllerOptions())
	if err != nil {
		return nil, fmt.Errorf("service account controller: %w", err)
	}

	r := &runningControllers{gc: gc}
	sharedInformers.Start(ctx.Done())
	objectOrMetadataInformers.Start(ctx.Done())
	close(informersStarted)

	r.wg.Go(func() { wait.Until(restMapper.Reset, 30*time.Second, ctx.Done()) })
	r.wg.Go(func() { gc.Run(ctx, o.gcWorkers, 30*time.Second) })
	// Sync discovers deletable resources (including CRDs added later) and
	// (re)starts the monitors; the period bounds how long a new CRD waits.
	r.wg.Go(func() { gc.Sync(ctx, gcDiscovery, o.gcSyncPeriod) })
	r.wg.Go(func() { nsController.Run(ctx, o.nsWorkers) })
	r.wg.Go(func() { roleAggregation.Run(ctx, 5) })
	r.wg.Go(func() { saController.Run(ctx, 1) })
	r.wg.Go(func() {
		<-ctx.Done()
		sharedInformers.Shutdown()
	})
	return r, nil
}
