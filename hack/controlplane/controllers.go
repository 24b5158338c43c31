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
	"k8s.io/kubernetes/pkg/controller/certificates/rootcacertpublisher"
	"k8s.io/kubernetes/pkg/controller/clusterroleaggregation"
	"k8s.io/kubernetes/pkg/controller/deployment"
	endpointslicecontroller "k8s.io/kubernetes/pkg/controller/endpointslice"
	"k8s.io/kubernetes/pkg/controller/garbagecollector"
	namespacecontroller "k8s.io/kubernetes/pkg/controller/namespace"
	lifecyclecontroller "k8s.io/kubernetes/pkg/controller/nodelifecycle"
	"k8s.io/kubernetes/pkg/controller/replicaset"
	serviceaccountcontroller "k8s.io/kubernetes/pkg/controller/serviceaccount"
)

type controllerOptions struct {
	gcSyncPeriod time.Duration
	gcWorkers    int
	nsWorkers    int
	// workload adds the controllers that running Pods on a node needs
	// (deployment, replicaset, node-lifecycle, endpointslice, root-ca
	// publisher); rootCA is the CA bundle the publisher hands to every
	// namespace as the kube-root-ca.crt ConfigMap.
	workload bool
	rootCA   []byte
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
	if o.workload {
		runs, err := workloadControllers(ctx, clientFor, sharedInformers, o.rootCA)
		if err != nil {
			return nil, err
		}
		for _, run := range runs {
			r.wg.Go(func() { run(ctx) })
		}
	}
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

// workloadControllers builds the kube-controller-manager controllers that
// Deployments and Services on a real node need, with kube-controller-manager's
// default settings (cmd/kube-controller-manager/app/apps.go, core.go,
// discovery.go, certificates.go):
//   - deployment and replicaset: Deployments become ReplicaSets become Pods;
//   - node-lifecycle: removes the not-ready taint a kubelet registers with,
//     marks nodes NotReady when their lease stops being renewed;
//   - endpointslice: Service selectors become EndpointSlices (kube-proxy's input);
//   - root-ca-cert-publisher: the kube-root-ca.crt ConfigMap that every
//     projected service-account token volume mounts.
//
// It returns their Run functions; the caller starts them after the informers.
func workloadControllers(ctx context.Context, clientFor func(string, float32) (*rest.Config, clientset.Interface, error),
	inf informers.SharedInformerFactory, rootCA []byte) ([]func(context.Context), error) {
	client := func(name string) (clientset.Interface, error) {
		_, c, err := clientFor(name, 1)
		return c, err
	}
	var runs []func(context.Context)

	rsClient, err := client("replicaset-controller")
	if err != nil {
		return nil, err
	}
	rsc := replicaset.NewReplicaSetController(ctx, inf.Apps().V1().ReplicaSets(), inf.Core().V1().Pods(),
		rsClient, replicaset.BurstReplicas)
	runs = append(runs, func(ctx context.Context) { rsc.Run(ctx, 5) })

	dClient, err := client("deployment-controller")
	if err != nil {
		return nil, err
	}
	dc, err := deployment.NewDeploymentController(ctx, inf.Apps().V1().Deployments(), inf.Apps().V1().ReplicaSets(),
		inf.Core().V1().Pods(), dClient)
	if err != nil {
		return nil, fmt.Errorf("deployment controller: %w", err)
	}
	runs = append(runs, func(ctx context.Context) { dc.Run(ctx, 5) })

	nlClient, err := client("node-controller")
	if err != nil {
		return nil, err
	}
	nlc, err := lifecyclecontroller.NewNodeLifecycleController(ctx,
		inf.Coordination().V1().Leases(), inf.Core().V1().Pods(), inf.Core().V1().Nodes(), inf.Apps().V1().DaemonSets(),
		nlClient,
		5*time.Second,  // node monitor period
		60*time.Second, // node startup grace period
		50*time.Second, // node monitor grace period
		0.1, 0.01, 50, 0.55)
	if err != nil {
		return nil, fmt.Errorf("node lifecycle controller: %w", err)
	}
	runs = append(runs, nlc.Run)

	esClient, err := client("endpointslice-controller")
	if err != nil {
		return nil, err
	}
	esc := endpointslicecontroller.NewController(ctx, inf.Core().V1().Pods(), inf.Core().V1().Services(),
		inf.Core().V1().Nodes(), inf.Discovery().V1().EndpointSlices(), 100, esClient, 0)
	runs = append(runs, func(ctx context.Context) { esc.Run(ctx, 5) })

	caClient, err := client("root-ca-cert-publisher")
	if err != nil {
		return nil, err
	}
	pub, err := rootcacertpublisher.NewPublisher(inf.Core().V1().ConfigMaps(), inf.Core().V1().Namespaces(), caClient, rootCA)
	if err != nil {
		return nil, fmt.Errorf("root CA publisher: %w", err)
	}
	runs = append(runs, func(ctx context.Context) { pub.Run(ctx, 1) })
	return runs, nil
}
