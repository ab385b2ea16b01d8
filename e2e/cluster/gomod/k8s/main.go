// Command warren-k8s is ONE binary that links the Kubernetes components the
// Warren e2e cluster needs and picks one by the name it is called as
// (symlinks kube-apiserver, kubelet, ... -> warren-k8s), or by its first
// argument (`warren-k8s kubelet --flags...`), the way K3s does.
//
// Why one binary: the components share almost all of their packages, so the
// compile time is the same as building them in one `go build`, and linking
// one binary instead of six saved no measurable time here (14 s vs 15 s); but
// it takes 129 MiB instead of 463 MiB on disk (and in any CI cache). See
// ../../README.md for the measured numbers.
//
// The blank imports are the ones each upstream cmd/<component>/main.go of
// k8s.io/kubernetes has; keep them in sync when bumping the version.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	_ "time/tzdata" // kube-apiserver, kube-controller-manager: CronJob time zones

	"github.com/spf13/cobra"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl: client auth plugins
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kube-proxy":              proxy.NewProxyCommand,
	"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
}

func main() {
	name := filepath.Base(os.Args[0])
	if !isComponent(name) && len(os.Args) > 1 && isComponent(os.Args[1]) {
		// `warren-k8s kubelet --flag ...`: drop our own name so the
		// component sees the argv it expects.
		name = os.Args[1]
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	switch {
	case name == "kubectl":
		runKubectl()
	case components[name] != nil:
		os.Exit(cli.Run(components[name]()))
	default:
		names := []string{"kubectl"}
		for n := range components {
			names = append(names, n)
		}
		fmt.Fprintf(os.Stderr, "usage: %s {%s} [flags]  (or call it through a symlink with that name)\n",
			filepath.Base(os.Args[0]), strings.Join(names, "|"))
		os.Exit(2)
	}
}

func isComponent(n string) bool { return n == "kubectl" || components[n] != nil }

// runKubectl is upstream cmd/kubectl/kubectl.go's main.
func runKubectl() {
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
}
