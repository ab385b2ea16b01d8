#!/usr/bin/env bash
# Checks the deployment files:
#   1. helm lint --strict of the chart, in both modes, with and without share.enabled;
#   2. the committed plain manifests are exactly what the chart renders (re-renders into a
#      temporary directory and diffs);
#   3. the chart's appVersion is the Cargo workspace version (the image tag it defaults to);
#   4. every object (manifests, examples, helm renders) decodes strictly into its
#      Kubernetes API type: no unknown or misplaced field (deploy/tools/validate, Go);
#   5. every YAML document in deploy/ parses (when python3 has PyYAML).
# Exits non-zero on the first kind of failure, after printing all its differences.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
helm="${HELM:-$(bash "$here/install-helm.sh")}"
export HELM="$helm"
fail=0

echo "== helm lint" >&2
for mode in standard edge; do
    for share in false true; do
        set -- --strict "$here/helm/warren" --set mode="$mode" --set share.enabled="$share"
        "$helm" lint "$@" >/dev/null || { "$helm" lint "$@"; fail=1; }
    done
done

echo "== rendered manifests up to date" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
bash "$here/render.sh" "$tmp" 2>/dev/null
for f in standard.yaml edge.yaml; do
    if ! diff -u "$here/manifests/$f" "$tmp/$f" > "$tmp/$f.diff"; then
        echo "deploy/manifests/$f differs from what the chart renders (run deploy/render.sh):" >&2
        head -n 60 "$tmp/$f.diff" >&2
        fail=1
    fi
done

echo "== chart appVersion = workspace version" >&2
app="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$here/helm/warren/Chart.yaml")"
cargo_version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")"
if [ "$app" != "$cargo_version" ]; then
    echo "Chart.yaml appVersion $app != Cargo workspace version $cargo_version" >&2
    fail=1
fi

echo "== objects decode strictly into the Kubernetes API types (deploy/tools/validate)" >&2
# The plain manifests, the examples, and a `helm install`-like render (generated token,
# VolumeSnapshotClass) in each mode, without and with the built-in share.
for mode in standard edge; do
    "$helm" template warren "$here/helm/warren" --namespace warren-system --set mode="$mode" \
        --set volumeSnapshotClass.force=true > "$tmp/helm-$mode.yaml"
    "$helm" template warren "$here/helm/warren" --namespace warren-system --set mode="$mode" \
        --set volumeSnapshotClass.force=true --set share.enabled=true > "$tmp/helm-$mode-share.yaml"
done
(cd "$here/tools/validate" && GOFLAGS=-mod=readonly go run . \
    "$here"/manifests/*.yaml "$here"/examples/*.yaml "$tmp"/helm-*.yaml) || fail=1

if python3 -c 'import yaml' 2>/dev/null; then
    echo "== YAML parses" >&2
    find "$here/manifests" "$here/examples" -name '*.yaml' -print0 | xargs -0 python3 -c '
import sys, yaml
bad = 0
for path in sys.argv[1:]:
    try:
        docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
        for d in docs:
            if not isinstance(d, dict) or "apiVersion" not in d or "kind" not in d:
                raise ValueError("a document without apiVersion/kind")
    except Exception as e:
        print(f"{path}: {e}", file=sys.stderr); bad = 1
sys.exit(bad)
' || fail=1
fi

if [ "$fail" = 0 ]; then echo "deploy/check.sh: all good" >&2; else echo "deploy/check.sh: FAILED" >&2; fi
exit "$fail"
