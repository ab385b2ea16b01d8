# Helpers of the end-to-end suite (sourced by e2e/run.sh): waiting, pods that use a
# claim, and the scenario runner that turns each scenario into one PASS/FAIL line.
# shellcheck shell=bash

NS=warren-e2e                       # namespace of every test object
RESULTS=()                          # "PASS name (12 s)" lines, in order
FAILED=0
SKIPPED=0

k() { kubectl "$@"; }
kn() { kubectl -n "$NS" "$@"; }

# fail MESSAGE: ends the current scenario (scenarios run in a subshell).
fail() { echo "FAIL: $*" >&2; exit 1; }
# skip REASON: the scenario cannot run here; said with the reason, not counted as passed.
skip() { echo "SKIP: $*" >&2; exit 77; }

# wait_until DESC SECONDS CMD...: retries CMD every second until it succeeds.
wait_until() {
  local desc="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for: $desc"
    sleep 1
  done
}

jp() { kn get "$1" "$2" -o "jsonpath=$3" 2>/dev/null; }

pvc_bound() { [[ "$(jp pvc "$1" '{.status.phase}')" == Bound ]]; }
pod_phase() { jp pod "$1" '{.status.phase}'; }
pod_done() { local p; p="$(pod_phase "$1")"; [[ $p == Succeeded || $p == Failed ]]; }
pod_running() { [[ "$(pod_phase "$1")" == Running ]]; }
gone() { ! kubectl get "$@" >/dev/null 2>&1; }

# pvc NAME SIZE [CLASS] [extra spec lines]: a ReadWriteOnce claim.
pvc() {
  local name="$1" size="$2" class="${3:-warren-local}" extra="${4:-}"
  kn apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $name}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: $class
  resources: {requests: {storage: $size}}
$extra
EOF
}

# pod NAME NODE CLAIM SCRIPT [PREFERRED_NODE]: a busybox pod on NODE (through the
# scheduler, by node selector; empty: anywhere) with CLAIM mounted at /data, running
# SCRIPT once. PREFERRED_NODE: a soft node affinity, which the scheduler tries first.
pod() {
  local name="$1" node="$2" claim="$3" script="$4" preferred="${5:-}"
  local affinity="{}"
  [[ -z $preferred ]] || affinity="{nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 100, preference: {matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$preferred]}]}}]}}"
  local selector="{}"
  [[ -z $node ]] || selector="{kubernetes.io/hostname: $node}"
  kn apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name}
spec:
  nodeSelector: $selector
  affinity: $affinity
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: $BUSYBOX_IMAGE
    command: [sh, -c]
    args:
    - |
$(printf '%s\n' "$script" | sed 's/^/      /')
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: $claim}
EOF
}

# run_pod NAME NODE CLAIM SCRIPT: pod(), waits until it ends, fails unless it succeeded;
# prints its log.
run_pod() {
  pod "$@"
  wait_until "pod $1 to finish" 120 pod_done "$1"
  local phase log
  phase="$(pod_phase "$1")"
  log="$(kn logs "$1" 2>&1)"
  [[ $phase == Succeeded ]] || fail "pod $1 ended $phase: $log"
  printf '%s\n' "$log"
}

# pv_of CLAIM: the PV bound to CLAIM.
pv_of() { jp pvc "$1" '{.spec.volumeName}'; }

# pv_node PV: the node a PV's node affinity names.
pv_node() {
  k get pv "$1" -o 'jsonpath={.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}'
}

# volume_dir PV NODE: the volume's directory in NODE's storage root (empty if none): the
# node plugin keeps the CSI name (= the PV name) in meta.json.
volume_dir() {
  local root meta
  root="$(warren_storage_root "$2")"
  for meta in "$root"/volumes/*/meta.json; do
    [[ -f $meta ]] || continue
    if grep -q "\"$1\"" "$meta"; then dirname "$meta"; return 0; fi
  done
}

# scenario NAME FUNCTION: runs FUNCTION in a subshell with errexit; one result line.
scenario() {
  local name="$1" fn="$2" t0=$SECONDS rc
  echo
  echo "=== scenario: $name"
  ( set -e; "$fn" ) 2>&1 | sed 's/^/    /'
  rc=${PIPESTATUS[0]}
  if ((rc == 0)); then
    RESULTS+=("PASS  $name ($((SECONDS - t0)) s)")
  elif ((rc == 77)); then
    RESULTS+=("SKIP  $name")
    SKIPPED=$((SKIPPED + 1))
  else
    RESULTS+=("FAIL  $name ($((SECONDS - t0)) s)")
    FAILED=$((FAILED + 1))
    diagnostics
  fi
  echo "--- ${RESULTS[-1]}"
}

# diagnostics: what someone needs to see after a failure.
diagnostics() {
  {
    echo "--- claims, volumes, pods:"
    kn get pvc,pod -o wide 2>&1
    k get pv -o wide 2>&1
    echo "--- events in $NS:"
    kn get events --sort-by=.lastTimestamp 2>&1 | tail -n 25
    echo "--- last lines of Warren's logs:"
    local p
    for p in $(k -n warren-system get pods -o name 2>/dev/null); do
      echo "[$p]"
      k -n warren-system logs "$p" --tail=30 2>&1
    done
  } | sed 's/^/    | /'
}

summary() {
  echo
  echo "=== e2e summary"
  local r
  for r in "${RESULTS[@]}"; do echo "$r"; done
  echo "$((${#RESULTS[@]} - FAILED - SKIPPED)) passed, $FAILED failed, $SKIPPED skipped (reasons above)"
}
