// Command kube-apiserver is the upstream Kubernetes API server with an etcd embedded in the same
// process, for the integration tests (tests/realenv/kubeapiserver.py).
//
// Usage:
//
//	kube-apiserver --etcd-data-dir=DIR --etcd-client-port=N --etcd-peer-port=M [kube-apiserver flags...]
//
// The three --etcd-* flags above are consumed here; every other argument goes to the upstream
// kube-apiserver command unchanged, with --etcd-servers pointing at the embedded etcd appended.
// etcd listens on 127.0.0.1 only. Restarting with the same data dir and ports keeps the data.
package main

import (
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

type etcdOptions struct {
	dataDir    string
	clientPort int
	peerPort   int
	logLevel   string
	noFsync    bool
}

// splitArgs takes this wrapper's own flags out of args and returns the rest untouched.
func splitArgs(args []string) (etcdOptions, []string, error) {
	opts := etcdOptions{logLevel: "error", noFsync: true}
	var rest []string
	for i := 0; i < len(args); i++ {
		arg := args[i]
		name, value, hasValue := strings.Cut(arg, "=")
		switch name {
		case "--etcd-data-dir", "--etcd-client-port", "--etcd-peer-port", "--etcd-log-level", "--etcd-unsafe-no-fsync":
		default:
			rest = append(rest, arg)
			continue
		}
		if !hasValue {
			if i+1 >= len(args) {
				return opts, nil, fmt.Errorf("flag %s needs a value", name)
			}
			i++
			value = args[i]
		}
		var err error
		switch name {
		case "--etcd-data-dir":
			opts.dataDir = value
		case "--etcd-client-port":
			opts.clientPort, err = strconv.Atoi(value)
		case "--etcd-peer-port":
			opts.peerPort, err = strconv.Atoi(value)
		case "--etcd-log-level":
			opts.logLevel = value
		case "--etcd-unsafe-no-fsync":
			opts.noFsync, err = strconv.ParseBool(value)
		}
		if err != nil {
			return opts, nil, fmt.Errorf("flag %s: %w", name, err)
		}
	}
	if opts.dataDir == "" || opts.clientPort <= 0 || opts.peerPort <= 0 {
		return opts, nil, fmt.Errorf("--etcd-data-dir, --etcd-client-port and --etcd-peer-port are required")
	}
	return opts, rest, nil
}

func startEtcd(opts etcdOptions) (*embed.Etcd, error) {
	clientURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(opts.clientPort)}
	peerURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(opts.peerPort)}

	cfg := embed.NewConfig()
	cfg.Name = "test"
	cfg.Dir = opts.dataDir
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = opts.logLevel
	cfg.LogOutputs = []string{"stderr"}
	// Test data only: skipping fsync makes writes much faster; a clean stop still flushes.
	cfg.UnsafeNoFsync = opts.noFsync

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd failed before ready: %w", err)
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("etcd not ready after 60s")
	}
}

func main() {
	opts, rest, err := splitArgs(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-apiserver (test wrapper):", err)
		os.Exit(2)
	}

	e, err := startEtcd(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-apiserver (test wrapper):", err)
		os.Exit(1)
	}

	command := app.NewAPIServerCommand()
	command.SetArgs(append(rest, "--etcd-servers=http://127.0.0.1:"+strconv.Itoa(opts.clientPort)))
	code := cli.Run(command)

	// The API server has returned (SIGTERM/SIGINT or an error): stop etcd cleanly so the next
	// start on the same data dir finds a consistent store.
	e.Close()
	os.Exit(code)
}
