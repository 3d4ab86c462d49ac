"""The KubeRay manifests of deploy/kubernetes/, checked without a Kubernetes cluster.

Every RayCluster and RayJob validates against the CRD schemas of KubeRay v1.5.1, vendored in
tests/deploy/crds/ (README there), the way `kubectl apply` validates it: unknown fields are
errors (kubectl's default `--validate=strict`), types, enums, patterns and required fields are
checked. The CRDs' CEL rules (`x-kubernetes-validations`) cannot run here; a test makes sure the
manifests set none of the fields that carry one. A few of the operator's own checks
(ray-operator/controllers/ray/utils/validation.go at v1.5.1) are repeated, those a manifest can
break.

The rest checks the promises docs/kubernetes.md and docs/cluster.md make: the Ray of the image,
token authentication, the image's tag and uid, GPUs on the workers only, the database URL only
from a Secret, checkpoints at one path everywhere, datasets read-only, and a submission whose
spec is in the image. Secrets, PVCs and the loader pod have no vendored schema: they get
structural checks only.

No Kubernetes cluster runs here (no kind or k3s on this machine): that a pod starts, pulls the
image and reaches its GPUs is not tested.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
CRDS = Path(__file__).with_name("crds")
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCS = ROOT / "docs" / "kubernetes.md"

#: Image references name this placeholder in front of the image, which the user replaces.
REGISTRY = "REGISTRY"
#: Every placeholder the manifests may hold: capitals, replaced before `kubectl apply`.
PLACEHOLDERS = (
    "REGISTRY",
    "STORAGE_CLASS",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_HOST",
    "RAY_TOKEN",
)
CHECKPOINTS_MOUNT = "/shared"
DATASETS_MOUNT = "/datasets"
DB_SECRET = ("bnsweep-db", "url")
#: The key KubeRay reads the token from, in a Secret named after the RayCluster.
TOKEN_KEY = "auth_token"


# -- loading ---------------------------------------------------------------------------------
def _documents() -> list[tuple[str, dict[str, Any]]]:
    """(file#index, document) for every YAML document under deploy/kubernetes/."""
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        for n, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            if doc is not None:
                docs.append((f"{path.name}#{n}", doc))
    return docs


DOCUMENTS = _documents()
RAY_DOCUMENTS = [(w, d) for w, d in DOCUMENTS if d.get("kind") in ("RayCluster", "RayJob")]


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in DOCUMENTS if d.get("kind") == kind]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _kind(kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''} under deploy/kubernetes/, found {len(found)}"
    )
    return found[0]


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """(owner, RayClusterSpec) of the RayCluster and of the RayJob's rayClusterSpec."""
    specs = [(f"RayCluster {d['metadata']['name']}", d["spec"]) for d in _kind("RayCluster")]
    specs += [
        (f"RayJob {d['metadata']['name']}", d["spec"]["rayClusterSpec"]) for d in _kind("RayJob")
    ]
    return specs


def _groups(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group, group spec): the head, then every worker group."""
    yield "head", spec["headGroupSpec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group


def _ray_container(group: dict[str, Any]) -> dict[str, Any]:
    # KubeRay runs Ray in the pod's first container (utils.RayContainerIndex = 0).
    return group["template"]["spec"]["containers"][0]


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec the manifests create: Ray groups, the RayJob's submitter, bare Pods."""
    for owner, spec in _cluster_specs():
        for name, group in _groups(spec):
            yield f"{owner} {name}", group["template"]["spec"]
    for job in _kind("RayJob"):
        if "submitterPodTemplate" in job["spec"]:
            yield (
                f"RayJob {job['metadata']['name']} submitter",
                job["spec"]["submitterPodTemplate"]["spec"],
            )
    for pod in _kind("Pod"):
        yield f"Pod {pod['metadata']['name']}", pod["spec"]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[dict, dict]]:
    """mountPath -> (volumeMount, volume) of one container."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container.get("volumeMounts", [])}


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, str):
        yield node


# -- the project's pins ----------------------------------------------------------------------
def _package_version() -> str:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["version"]


def _pinned_ray() -> str:
    """The Ray every image variant pins: docker/requirements*.in (one per torch build)."""
    pins = {}
    for path in sorted((ROOT / "docker").glob("requirements*.in")):
        text = path.read_text(encoding="utf-8")
        found = re.findall(r"^ray(?:\[[^\]]*\])?==([\w.]+)\s*$", text, re.M)
        assert len(found) == 1, f"{path.name} pins ray {len(found)} times; expected once"
        pins[path.name] = found[0]
    assert pins, "no docker/requirements*.in pins ray"
    assert len(set(pins.values())) == 1, f"the image variants pin different Rays: {pins}"
    return next(iter(pins.values()))


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of docker/Dockerfile, continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    steps = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            steps.append((keyword.upper(), rest.strip()))
    return steps


def _image_uid() -> int:
    """The uid the image runs as: its last USER, numeric or an ARG with a numeric default."""
    steps = _dockerfile()
    users = [args for kw, args in steps if kw == "USER"]
    assert users, "docker/Dockerfile has no USER: the image would run as root"
    user = users[-1].split(":")[0]
    variable = re.fullmatch(r"\$\{?(\w+)\}?", user)
    if variable:
        defaults = [
            m.group(1)
            for kw, args in steps
            if kw == "ARG" and (m := re.fullmatch(rf"{variable.group(1)}=(\S+)", args))
        ]
        assert defaults, f"docker/Dockerfile's USER {user} has no ARG default"
        user = defaults[-1].strip("\"'")
    assert user.isdigit(), (
        f"docker/Dockerfile's USER is {user!r}, not numeric: runAsNonRoot cannot verify a name"
    )
    return int(user)


def _image_entrypoint() -> list[str]:
    found = [args for kw, args in _dockerfile() if kw == "ENTRYPOINT"]
    assert found, "docker/Dockerfile has no ENTRYPOINT"
    return json.loads(found[-1])


def _image_workdir_configs() -> tuple[str, str]:
    """(where docker/Dockerfile copies the repository's configs/, its final WORKDIR)."""
    workdir, target = "/", None
    for kw, args in _dockerfile():
        words = [w for w in args.split() if not w.startswith("--")]
        if kw == "WORKDIR":
            workdir = args if args.startswith("/") else f"{workdir.rstrip('/')}/{args}"
        elif kw == "COPY" and words[:-1] == ["configs"]:
            dest = words[-1]
            target = (
                dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest.removeprefix('./')}"
            )
    assert target, "docker/Dockerfile does not COPY configs/ into the image"
    return target.rstrip("/"), workdir


# -- CRD schemas -----------------------------------------------------------------------------
def _strict(node: Any) -> Any:
    """A CRD's structural schema as a JSON schema that validates like `kubectl apply`.

    - An object schema with `properties` and neither `additionalProperties` nor
      `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`: the API server
      drops unknown fields and kubectl's strict validation (its default) makes them errors.
    - `nullable: true` admits null. `x-kubernetes-int-or-string` already comes with its `anyOf`
      of integer and string (controller-gen writes both); one without gets that type.
    - `format` (int32, int64, date-time) is not asserted, as in the API server's validation.
    - Other `x-kubernetes-*` keywords (list types, map types, CEL rules) are left as they are;
      jsonschema ignores keywords it does not know.
    """
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["type"] = ["integer", "string"]
    return out


@functools.cache
def _crds() -> dict[str, dict[str, Any]]:
    """kind -> CRD. Parsed once: they are 2 MB of YAML (libyaml's loader where present)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crds = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
        crds[crd["spec"]["names"]["kind"]] = crd
    return crds


def _crd(kind: str) -> dict[str, Any]:
    assert kind in _crds(), f"no vendored CRD for kind {kind} in {CRDS}"
    return _crds()[kind]


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft4Validator:
    schema = _schema(api_version, kind)
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _schema(api_version: str, kind: str) -> dict[str, Any]:
    crd = _crd(kind)
    group, _, version = api_version.partition("/")
    assert group == crd["spec"]["group"], (
        f"{kind} is in API group {crd['spec']['group']}, not {group}"
    )
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert version in versions, f"{kind} has versions {sorted(versions)}, not {version}"
    assert versions[version]["served"], f"{kind} {version} is not served by KubeRay v1.5.1"
    schema = _strict(versions[version]["schema"]["openAPIV3Schema"])
    # apiVersion and kind are plain strings in the CRD; the API server routes on them.
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted(
        {*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"}
    )
    return schema


def _errors(doc: dict[str, Any]) -> list[str]:
    validator = _validator(doc["apiVersion"], doc["kind"])
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(
            validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))
        )
    ]


def _rule_paths(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Paths of the fields that carry CEL rules (`[]` stands for a list's items)."""
    if schema.get("x-kubernetes-validations"):
        yield path
    for key, sub in schema.get("properties", {}).items():
        yield from _rule_paths(sub, (*path, key))
    if isinstance(schema.get("items"), dict):
        yield from _rule_paths(schema["items"], (*path, "[]"))


def _present(node: Any, path: tuple[str, ...]) -> bool:
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "[]":
        return isinstance(node, list) and any(_present(item, rest) for item in node)
    return isinstance(node, dict) and head in node and _present(node[head], rest)


# -- schema validation -----------------------------------------------------------------------
def test_the_manifests_are_there() -> None:
    kinds = sorted(d.get("kind", "?") for _, d in DOCUMENTS)
    assert kinds.count("RayJob") == 1 and kinds.count("RayCluster") == 1, kinds
    assert kinds.count("Secret") == 2 and kinds.count("PersistentVolumeClaim") == 2, kinds


@pytest.mark.parametrize(("where", "doc"), RAY_DOCUMENTS, ids=[w for w, _ in RAY_DOCUMENTS])
def test_validates_against_the_kuberay_crd(where: str, doc: dict[str, Any]) -> None:
    assert _errors(doc) == []


def _head(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["headGroupSpec"]["template"]["spec"]["containers"][0]


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


#: Edits that make a cluster spec invalid, and what the rejection must name.
BREAKAGES: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "a worker's GPU limit as a list": (
        lambda s: _worker(s)["resources"]["limits"].update({"nvidia.com/gpu": [4]}),
        "limits.nvidia.com/gpu: [4] is not valid",
    ),
    "replicas as a string": (
        lambda s: s["workerGroupSpecs"][0].update(replicas="two"),
        "'two' is not of type 'integer'",
    ),
    "a required groupName missing": (
        lambda s: s["workerGroupSpecs"][0].pop("groupName"),
        "'groupName' is a required property",
    ),
    "a misspelt rayStartParams": (
        lambda s: s["headGroupSpec"].update(rayStartParam=s["headGroupSpec"].pop("rayStartParams")),
        "'rayStartParam' was unexpected",
    ),
    "an auth mode KubeRay does not know": (
        lambda s: s["authOptions"].update(mode="tokens"),
        "'tokens' is not one of ['disabled', 'token']",
    ),
    "a rayStartParams value that is no string": (
        lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-gpus": 0}),
        "num-gpus: 0 is not of type 'string'",
    ),
    "a container without a name": (lambda s: _head(s).pop("name"), "'name' is a required property"),
    "a memory limit that is no quantity": (
        lambda s: _head(s)["resources"]["limits"].update(memory="32 gigabytes"),
        "limits.memory: '32 gigabytes' does not match",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_the_validation_rejects_a_broken_manifest(kind: str, breakage: str) -> None:
    doc = copy.deepcopy(_one(kind))
    mutate, says = BREAKAGES[breakage]
    mutate(doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"])
    errors = _errors(doc)
    assert len(errors) == 1 and says in errors[0], errors


def test_the_validation_rejects_an_unknown_top_level_field_and_a_wrong_api_version() -> None:
    job = copy.deepcopy(_one("RayJob"))
    job["spec"]["entrypointz"] = job["spec"].pop("entrypoint")
    assert any("entrypointz" in e for e in _errors(job))
    cluster = copy.deepcopy(_one("RayCluster"))
    cluster["apiVersion"] = "ray.io/v2"
    with pytest.raises(AssertionError, match="versions"):
        _errors(cluster)


def test_no_manifest_sets_a_field_whose_cel_rule_is_not_checked_here() -> None:
    for where, doc in RAY_DOCUMENTS:
        schema = _crd(doc["kind"])["spec"]["versions"]
        openapi = next(v for v in schema if v["name"] == doc["apiVersion"].split("/")[1])["schema"][
            "openAPIV3Schema"
        ]
        paths = list(_rule_paths(openapi))
        assert paths, (
            "the CRD carries CEL rules (managedBy, deletionStrategy); finding none is a bug here"
        )
        assert [p for p in paths if _present(doc, p)] == [], where


# -- KubeRay's own checks (validation.go, v1.5.1) --------------------------------------------
def test_names_are_dns_labels_short_enough_for_the_pods_kuberay_derives() -> None:
    # RayCluster names up to 53 characters; a RayJob's cluster adds "-xxxxx", so 47.
    for kind, limit in (("RayCluster", 53), ("RayJob", 47)):
        for doc in _kind(kind):
            name = doc["metadata"]["name"]
            assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= limit, (
                kind,
                name,
            )


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@pytest.mark.parametrize(("owner", "spec"), _cluster_specs(), ids=[o for o, _ in _cluster_specs()])
def test_kuberay_accepts_the_cluster_spec(owner: str, spec: dict[str, Any]) -> None:
    # Token mode needs a parsable rayVersion >= 2.52.0.
    assert _version(spec["rayVersion"]) >= (2, 52, 0), spec["rayVersion"]
    for name, group in _groups(spec):
        params = group.get("rayStartParams", {})
        # Resources go either to rayStartParams or to the group's `resources`, never both.
        if {"num-cpus", "num-gpus", "memory", "resources"} & params.keys():
            assert not group.get("resources"), (
                f"{owner} {name}: resources in rayStartParams and in resources"
            )
        assert "labels" not in params, f"{owner} {name}: labels belong in the group's labels field"
        assert group["template"]["spec"]["containers"], f"{owner} {name}: no container"


def test_the_rayjob_frees_its_cluster_only_in_a_way_kuberay_accepts() -> None:
    job = _one("RayJob")["spec"]
    if "ttlSecondsAfterFinished" in job:
        assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] >= 0
    assert job.get("backoffLimit", 0) >= 0
    assert job.get("submissionMode", "K8sJobMode") == "K8sJobMode", (
        "a submitterPodTemplate needs K8sJobMode"
    )
    assert job["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"


# -- bnsweep's promises ----------------------------------------------------------------------
def test_the_rayjob_runs_the_same_cluster_as_the_raycluster() -> None:
    assert _one("RayJob")["spec"]["rayClusterSpec"] == _one("RayCluster")["spec"]


@pytest.mark.parametrize(("owner", "spec"), _cluster_specs(), ids=[o for o, _ in _cluster_specs()])
def test_ray_version_is_the_pinned_one_and_token_auth_is_on(
    owner: str, spec: dict[str, Any]
) -> None:
    assert spec["rayVersion"] == _pinned_ray(), (
        f"{owner}: rayVersion {spec['rayVersion']} vs the image's Ray"
    )
    assert spec["authOptions"] == {"mode": "token"}, owner
    for name, group in _groups(spec):
        env = _env(_ray_container(group))
        # The operator sets both; a manifest that set them too would fight it.
        assert (
            "RAY_AUTH_TOKEN" not in env
            and env.get("RAY_AUTH_MODE", {"value": "token"}).get("value") == "token"
        ), f"{owner} {name}"


def test_every_image_is_the_package_version_behind_the_registry_placeholder() -> None:
    expected = f"{REGISTRY}/bnsweep:{_package_version()}"
    images = [(where, c["image"]) for where, pod in _pod_specs() for c in _containers(pod)]
    assert len(images) >= 4, images
    assert [(w, i) for w, i in images if i != expected] == []


@pytest.mark.parametrize(("owner", "spec"), _cluster_specs(), ids=[o for o, _ in _cluster_specs()])
def test_gpus_go_to_the_workers_and_none_to_the_head(owner: str, spec: dict[str, Any]) -> None:
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0", owner
    assert "nvidia.com/gpu" not in _ray_container(head).get("resources", {}).get("limits", {}), (
        owner
    )
    workers = spec["workerGroupSpecs"]
    assert workers, f"{owner}: no worker group"
    for group in workers:
        resources = _ray_container(group)["resources"]
        gpus = resources["limits"]["nvidia.com/gpu"]
        assert int(gpus) >= 1, (owner, group["groupName"])
        # Kubernetes refuses GPU requests that differ from the limit.
        assert resources.get("requests", {}).get("nvidia.com/gpu", gpus) == gpus, (
            owner,
            group["groupName"],
        )
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], (
            owner,
            group["groupName"],
        )


@pytest.mark.parametrize(("owner", "spec"), _cluster_specs(), ids=[o for o, _ in _cluster_specs()])
def test_the_database_url_comes_from_its_secret_on_the_head_only(
    owner: str, spec: dict[str, Any]
) -> None:
    head = _env(_ray_container(spec["headGroupSpec"]))
    assert head["BNSWEEP_DB"] == {
        "name": "BNSWEEP_DB",
        "valueFrom": {"secretKeyRef": {"name": DB_SECRET[0], "key": DB_SECRET[1]}},
    }, owner
    for name, group in _groups(spec):
        if name != "head":
            # Trials never write to the store: only the driver, on the head, does.
            assert "BNSWEEP_DB" not in _env(_ray_container(group)), f"{owner} {name}"


def test_no_literal_secrets_in_any_manifest() -> None:
    secretish = re.compile(r"TOKEN|PASSWORD|SECRET|_DB$|_URL$|PGPASS", re.I)
    for where, pod in _pod_specs():
        for container in _containers(pod):
            for name, entry in _env(container).items():
                if secretish.search(name):
                    assert "value" not in entry and "secretKeyRef" in entry.get("valueFrom", {}), (
                        where,
                        name,
                    )
    credentials = re.compile(r"://[^/\s:@]+:([^@\s]+)@")
    for where, doc in DOCUMENTS:
        for text in _strings(doc):
            for password in credentials.findall(text):
                assert password in PLACEHOLDERS, f"{where}: a password in a URL: {text}"


def test_the_secret_template_holds_placeholders_only() -> None:
    secrets = {d["metadata"]["name"]: d for d in _kind("Secret")}
    assert set(secrets) == {DB_SECRET[0], _one("RayCluster")["metadata"]["name"]}, sorted(secrets)
    for name, secret in secrets.items():
        assert "data" not in secret, (
            f"Secret {name}: base64 `data` would hide a real value; use stringData"
        )
        for key, value in secret["stringData"].items():
            rest = re.sub("|".join(PLACEHOLDERS), "", value)
            assert rest != value and not re.search(r"[A-Z]{4,}", rest), (
                f"Secret {name}.{key} = {value!r}"
            )
    assert secrets[DB_SECRET[0]]["stringData"].keys() == {DB_SECRET[1]}
    assert secrets[DB_SECRET[0]]["stringData"][DB_SECRET[1]].startswith("postgresql+psycopg://")
    # KubeRay (authOptions mode token) reads the token from a Secret named after the RayCluster.
    assert secrets[_one("RayCluster")["metadata"]["name"]]["stringData"] == {TOKEN_KEY: "RAY_TOKEN"}


def _pvcs() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _kind("PersistentVolumeClaim")}


def test_secrets_pvcs_and_pods_have_the_structure_kubernetes_needs() -> None:
    # No core schema is vendored: the basic shape only.
    for where, doc in DOCUMENTS:
        if doc.get("kind") in ("Secret", "PersistentVolumeClaim", "Pod"):
            assert doc["apiVersion"] == "v1", where
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), where
            assert "namespace" not in doc["metadata"], (
                f"{where}: the namespace comes from kubectl's context"
            )
    for name, pvc in _pvcs().items():
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], name
        assert re.fullmatch(r"\d+[GT]i", pvc["spec"]["resources"]["requests"]["storage"]), name
        assert pvc["spec"]["storageClassName"] == "STORAGE_CLASS", name


def _claim(volume: dict[str, Any]) -> str | None:
    return volume.get("persistentVolumeClaim", {}).get("claimName")


@pytest.mark.parametrize(("owner", "spec"), _cluster_specs(), ids=[o for o, _ in _cluster_specs()])
def test_checkpoints_at_one_path_everywhere_and_datasets_read_only(
    owner: str, spec: dict[str, Any]
) -> None:
    pvcs = _pvcs()
    claims = set()
    for name, group in _groups(spec):
        pod = group["template"]["spec"]
        mounts = _mounts(pod, _ray_container(group))
        mount, volume = mounts[CHECKPOINTS_MOUNT]
        assert not mount.get("readOnly"), f"{owner} {name}: checkpoints must be writable"
        claims.add(_claim(volume))
        shm = mounts["/dev/shm"][1]
        assert shm["emptyDir"]["medium"] == "Memory", (
            f"{owner} {name}: Ray's object store needs a big /dev/shm"
        )
        if name == "head":
            continue
        mount, volume = mounts[DATASETS_MOUNT]
        assert mount.get("readOnly") is True, f"{owner} {name}: /datasets must be read-only"
        assert volume["persistentVolumeClaim"].get("readOnly") is True, f"{owner} {name}"
        assert _claim(volume) in pvcs, f"{owner} {name}: no PVC {_claim(volume)} in storage.yaml"
        cache = _env(_ray_container(group))["BNSWEEP_CACHE_DIR"]["value"]
        assert cache.startswith(CHECKPOINTS_MOUNT + "/"), (
            f"{owner} {name}: the cache must be writable"
        )
    assert len(claims) == 1 and claims <= pvcs.keys(), (
        f"{owner}: /shared from {claims}, one RWX PVC expected"
    )


@pytest.mark.parametrize(("where", "pod"), list(_pod_specs()), ids=[w for w, _ in _pod_specs()])
def test_every_pod_runs_as_the_images_non_root_uid(where: str, pod: dict[str, Any]) -> None:
    uid = _image_uid()
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == uid, where
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
    for container in _containers(pod):
        own = container.get("securityContext", {})
        assert own.get("runAsNonRoot", True) is True and own.get("runAsUser", uid) == uid, where
        # Pod Security "restricted": what KubeRay's init containers copy from the Ray container.
        assert own.get("allowPrivilegeEscalation") is False and own["capabilities"]["drop"] == [
            "ALL"
        ], where


def test_the_submission_runs_a_spec_the_image_holds_and_the_cluster_can_serve() -> None:
    job = _one("RayJob")["spec"]
    words = shlex.split(job["entrypoint"])
    assert words[:2] == ["bnsweep", "launch"], words
    spec_path = words[2]
    assert not spec_path.startswith("/") and (ROOT / spec_path).is_file(), spec_path
    assert "--db" not in words, "a --db URL would show in `ray job list` and on the dashboard"
    configs, workdir = _image_workdir_configs()
    # `ray job submit` runs in the head's working directory: the image's WORKDIR.
    assert configs == f"{workdir.rstrip('/')}/configs", (configs, workdir)
    assert spec_path.startswith("configs/"), spec_path
    for where, pod in _pod_specs():
        assert all("workingDir" not in c for c in _containers(pod)), (
            f"{where} moves away from {workdir}"
        )

    sweep = yaml.safe_load((ROOT / spec_path).read_text(encoding="utf-8"))
    assert sweep["defaults"]["data_root"] == DATASETS_MOUNT
    assert sweep["storage"].startswith(CHECKPOINTS_MOUNT + "/")
    # Every GPU of a worker can be used: the CPU limit covers the trials its GPUs hold.
    for group in job["rayClusterSpec"]["workerGroupSpecs"]:
        limits = _ray_container(group)["resources"]["limits"]
        trials = int(limits["nvidia.com/gpu"]) / sweep["resources"]["gpus"]
        assert trials * sweep["resources"]["cpus"] <= int(limits["cpu"]), group["groupName"]


def test_the_image_entrypoint_is_what_the_loader_relies_on() -> None:
    # The loader pod passes only args, so the image's entry point runs them as given.
    assert _image_entrypoint() == ["bnsweep-entrypoint"]
    loader = _one("Pod")["spec"]["containers"][0]
    assert "command" not in loader and loader["args"][0] == "sleep"
    mounts = _mounts(_one("Pod")["spec"], loader)
    assert not mounts[DATASETS_MOUNT][0].get("readOnly"), "the loader fills the datasets volume"
    assert {_claim(v) for _, v in mounts.values()} == _pvcs().keys()


# -- the guide -------------------------------------------------------------------------------
def _guide() -> str:
    assert DOCS.is_file(), "docs/kubernetes.md is missing"
    return DOCS.read_text(encoding="utf-8")


def test_every_placeholder_is_documented_and_every_documented_one_is_used() -> None:
    used = {p for _, d in DOCUMENTS for text in _strings(d) for p in PLACEHOLDERS if p in text}
    raw = "".join(path.read_text(encoding="utf-8") for path in KUBE.glob("*.yaml"))
    assert used == set(PLACEHOLDERS), sorted(set(PLACEHOLDERS) - used)
    guide = _guide()
    assert [p for p in PLACEHOLDERS if f"`{p}`" not in guide] == []
    # No other capitalised placeholder hides in a value.
    values = {t for _, d in DOCUMENTS for t in _strings(d)}
    stray = {w for t in values for w in re.findall(r"\b[A-Z][A-Z_]{4,}\b", t)} - set(PLACEHOLDERS)
    assert stray <= {
        "BNSWEEP_DB",
        "BNSWEEP_SHARED_STORAGE",
        "BNSWEEP_CACHE_DIR",
        "RAY_AUTH_MODE",
    }, stray
    assert raw.count("REGISTRY/bnsweep:") >= 3


def test_the_guide_uses_the_shipped_files_and_names_the_secrets_they_read() -> None:
    guide = _guide()
    for path in set(re.findall(r"\b(deploy/[\w./-]+\.(?:yaml|def|sbatch)|docker/[\w./-]+)", guide)):
        assert (ROOT / path).exists(), f"docs/kubernetes.md names {path}, which does not exist"
    for name in (
        "rayjob.yaml",
        "raycluster.yaml",
        "storage.yaml",
        "datasets-loader.yaml",
        "secrets.template.yaml",
    ):
        assert f"deploy/kubernetes/{name}" in guide, name
    # The `kubectl create secret` of the guide makes the Secret the manifests read.
    assert re.search(rf"create secret generic {DB_SECRET[0]} --from-file={DB_SECRET[1]}=", guide)
    token_secret = _one("RayCluster")["metadata"]["name"]
    assert re.search(rf"create secret generic {token_secret} --from-file={TOKEN_KEY}=", guide)
    assert "KubeRay v1.5.1" in guide and "--version 1.5.1" in guide
    version = _package_version()
    assert f"bnsweep:{version}" in guide, f"the guide does not build bnsweep:{version}"
