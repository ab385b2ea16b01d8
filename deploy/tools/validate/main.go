// Command validate strictly decodes every Kubernetes object in the YAML files it is given
// into its typed Go struct from k8s.io/api (and the snapshot API): an unknown or misplaced
// field, or a value of the wrong type, is an error, as the API server's strict field
// validation would report it. It also checks what decoding cannot see: a workload's
// selector matches its pod labels, every volumeMount names a declared volume, and port
// names are valid. deploy/check.sh runs it on the rendered manifests and the examples.
//
//	go run . FILE.yaml...
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

var kinds = map[string]func() any{
	"v1/Namespace":             func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount":        func() any { return &corev1.ServiceAccount{} },
	"v1/Secret":                func() any { return &corev1.Secret{} },
	"v1/PersistentVolumeClaim": func() any { return &corev1.PersistentVolumeClaim{} },
	"v1/Pod":                   func() any { return &corev1.Pod{} },
	"apps/v1/Deployment":       func() any { return &appsv1.Deployment{} },
	"apps/v1/DaemonSet":        func() any { return &appsv1.DaemonSet{} },
	"rbac.authorization.k8s.io/v1/ClusterRole":         func() any { return &rbacv1.ClusterRole{} },
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding":  func() any { return &rbacv1.ClusterRoleBinding{} },
	"rbac.authorization.k8s.io/v1/Role":                func() any { return &rbacv1.Role{} },
	"rbac.authorization.k8s.io/v1/RoleBinding":         func() any { return &rbacv1.RoleBinding{} },
	"storage.k8s.io/v1/CSIDriver":                      func() any { return &storagev1.CSIDriver{} },
	"storage.k8s.io/v1/StorageClass":                   func() any { return &storagev1.StorageClass{} },
	"snapshot.storage.k8s.io/v1/VolumeSnapshotClass":   func() any { return &snapv1.VolumeSnapshotClass{} },
	"snapshot.storage.k8s.io/v1/VolumeSnapshot":        func() any { return &snapv1.VolumeSnapshot{} },
	"apiextensions.k8s.io/v1/CustomResourceDefinition": func() any { return &apiextensionsv1.CustomResourceDefinition{} },
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: validate FILE.yaml...")
		os.Exit(2)
	}
	failed := false
	objects := 0
	for _, path := range os.Args[1:] {
		n, errs := validateFile(path)
		objects += n
		for _, err := range errs {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "validate: %d objects in %d files decode strictly\n", objects, len(os.Args)-1)
}

func validateFile(path string) (int, []error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, []error{err}
	}
	defer f.Close()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var errs []error
	n := 0
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, append(errs, err)
		}
		if isEmpty(raw) {
			continue
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(raw, &meta); err != nil {
			errs = append(errs, fmt.Errorf("document %d: %w", doc, err))
			continue
		}
		key := meta.APIVersion + "/" + meta.Kind
		newObj, ok := kinds[key]
		if !ok {
			errs = append(errs, fmt.Errorf("document %d: unknown kind %s", doc, key))
			continue
		}
		obj := newObj()
		if err := yaml.UnmarshalStrict(raw, obj); err != nil {
			errs = append(errs, fmt.Errorf("document %d (%s): %w", doc, meta.Kind, err))
			continue
		}
		n++
		for _, e := range check(obj) {
			errs = append(errs, fmt.Errorf("document %d (%s): %s", doc, meta.Kind, e))
		}
	}
	return n, errs
}

func isEmpty(raw []byte) bool {
	for _, line := range bytes.Split(raw, []byte("\n")) {
		l := strings.TrimSpace(string(line))
		if l != "" && !strings.HasPrefix(l, "#") && l != "---" {
			return false
		}
	}
	return true
}

// check: what strict decoding cannot see.
func check(obj any) []string {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return append(selects(o.Spec.Selector, o.Spec.Template.Labels), checkPod(&o.Spec.Template.Spec)...)
	case *appsv1.DaemonSet:
		return append(selects(o.Spec.Selector, o.Spec.Template.Labels), checkPod(&o.Spec.Template.Spec)...)
	case *corev1.Pod:
		return checkPod(&o.Spec)
	}
	return nil
}

func selects(sel *metav1.LabelSelector, labels map[string]string) []string {
	if sel == nil {
		return []string{"no selector"}
	}
	var out []string
	for k, v := range sel.MatchLabels {
		if labels[k] != v {
			out = append(out, fmt.Sprintf("selector %s=%s does not match the pod template's labels", k, v))
		}
	}
	return out
}

func checkPod(spec *corev1.PodSpec) []string {
	var out []string
	volumes := map[string]bool{}
	for _, v := range spec.Volumes {
		if volumes[v.Name] {
			out = append(out, "volume "+v.Name+" declared twice")
		}
		volumes[v.Name] = true
	}
	names := map[string]bool{}
	ports := map[string]bool{}
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		if names[c.Name] {
			out = append(out, "container "+c.Name+" declared twice")
		}
		names[c.Name] = true
		if c.Image == "" {
			out = append(out, "container "+c.Name+" has no image")
		}
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				out = append(out, fmt.Sprintf("container %s mounts undeclared volume %s", c.Name, m.Name))
			}
		}
		for _, d := range c.VolumeDevices {
			if !volumes[d.Name] {
				out = append(out, fmt.Sprintf("container %s uses undeclared volume %s", c.Name, d.Name))
			}
		}
		for _, p := range c.Ports {
			if p.Name == "" {
				continue
			}
			for _, msg := range validation.IsValidPortName(p.Name) {
				out = append(out, fmt.Sprintf("container %s port %q: %s", c.Name, p.Name, msg))
			}
			if ports[p.Name] {
				out = append(out, fmt.Sprintf("port name %q used twice in the pod", p.Name))
			}
			ports[p.Name] = true
		}
	}
	return out
}
