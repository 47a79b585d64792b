"""The deployment files (deploy/) against the code they run: every flag and variable the
Kubernetes manifest gives ``tierstore serve`` is one it takes, with a value it takes,
and the ports, paths and user agree between the manifest, the image and the node.

The manifest is read as text (no YAML library is a dependency): the few blocks checked
here are found by their keys and indentation."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tierstore.cli.main import app
from tierstore.config import EngineSettings, load_settings
from tierstore.server.app import check_listen_addresses
from tierstore.server.tls import check_hostnames
from tierstore.tiers.s3_connection import check_bucket_name, check_endpoint_url

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kubernetes" / "tierstore.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

Line = tuple[int, str]  # (indentation, text without its comment)


def manifest_lines() -> list[Line]:
    """The manifest's lines that hold something, comments cut off."""
    lines = []
    for raw in MANIFEST.read_text().splitlines():
        text = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if text.strip():
            lines.append((len(text) - len(text.lstrip()), text.strip()))
    return lines


def block(key: str, lines: list[Line] | None = None) -> list[Line]:
    """The lines under the first ``key:`` (those indented deeper than it)."""
    lines = manifest_lines() if lines is None else lines
    for at, (indent, text) in enumerate(lines):
        if re.fullmatch(rf"(- )?{re.escape(key)}:", text):
            under = []
            for deeper, inner in lines[at + 1 :]:
                if deeper <= indent:
                    break
                under.append((deeper, inner))
            return under
    raise AssertionError(f"the manifest has no {key}: block")


def items(lines: list[Line]) -> list[str]:
    """The entries of a block sequence (``- entry``), at the block's own indentation."""
    first = lines[0][0]
    return [text[2:] for indent, text in lines if indent == first and text.startswith("- ")]


def value(key: str, lines: list[Line]) -> str:
    """The scalar of ``key: value`` among ``lines`` (its first), or of ``{key: value}``."""
    for _, text in lines:
        found = re.search(rf"(?:^|[{{,]\s*|- ){re.escape(key)}: ([^,{{}}]+)", text)
        if found:
            return found.group(1).strip().strip('"')
    raise AssertionError(f"no {key} in the block looked at")


def mapping(key: str, lines: list[Line]) -> dict[str, str]:
    """The mapping of ``key``: written in flow (``key: {a: b}``) or as a block below."""
    for _, text in lines:
        if text.startswith(f"{key}: {{"):
            return dict(re.findall(r"([\w./-]+): ([^,{}]+)", text[len(key) + 2 :]))
        if text == f"{key}:":
            below = block(key, lines)
            first = below[0][0]
            return dict(line.split(": ", 1) for deeper, line in below if deeper == first)
    raise AssertionError(f"no {key} in the block looked at")


def container_env() -> dict[str, str]:
    """The container's environment: a literal's value, or the source of one taken from
    elsewhere (``fieldRef``, ``secretKeyRef``) as its text."""
    env: dict[str, str] = {}
    name = ""
    for _, text in block("env", block("containers")):
        if text.startswith("- name: "):
            name = text.removeprefix("- name: ")
        elif text.startswith(("value: ", "valueFrom: ")):
            env[name] = text.split(": ", 1)[1].strip('"')
    return env


def node_settings() -> EngineSettings:
    """The engine settings the node's variables make (load_settings refuses a
    TIERSTORE_ variable that names no setting, the options' own aside)."""
    return load_settings(
        environ={name: v for name, v in container_env().items() if name.startswith("TIERSTORE_")}
    )


def expand(argument: str, env: dict[str, str]) -> str:
    """``$(NAME)`` replaced as the kubelet does (a field or Secret by a stand-in)."""
    stand_ins = {"POD_NAME": "tierstore-0", "POD_NAMESPACE": "storage"}
    return re.sub(r"\$\((\w+)\)", lambda m: stand_ins.get(m[1], env[m[1]]), argument)


def serve_command() -> Any:
    """``tierstore serve``'s command, whose parser reads the arguments as the node does."""
    return typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]


def serve_arguments() -> list[str]:
    arguments = items(block("args"))
    assert arguments[0] == "serve"
    return [expand(argument, container_env()) for argument in arguments[1:]]


def port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_every_argument_and_variable_the_manifest_gives_serve_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = container_env()
    command = serve_command()
    options = {param.envvar for param in command.params}
    for name, source in env.items():
        if name in options:  # the archive's keys, the only variables serve's options read
            assert "secretKeyRef" in source, f"{name} is a secret: from a Secret, please"
            monkeypatch.setenv(name, f"from-{name}")
    node_settings()  # and any other TIERSTORE_ variable names a setting
    arguments = serve_arguments()
    flags = {argument.split("=", 1)[0] for argument in arguments}
    known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    assert flags <= known, flags - known
    params = command.make_context("serve", arguments).params
    assert params["s3_access_key"] == "from-TIERSTORE_S3_ACCESS_KEY"
    assert params["s3_secret_key"] == "from-TIERSTORE_S3_SECRET_KEY"
    # The values the node checks before it starts.
    check_listen_addresses(params["listen"], params["health_listen"], params["metrics_listen"])
    check_hostnames(params["hostname"])
    check_endpoint_url(params["s3_endpoint"])
    check_bucket_name(params["bucket"], strict=False)
    assert not params["insecure"], "plaintext API off loopback"
    assert params["prefix"].endswith("/")


def test_ports_probes_and_the_network_policy_agree_with_serve_s_addresses() -> None:
    params = serve_command().make_context("serve", serve_arguments()).params
    api, health, metrics = (
        port(params[key]) for key in ("listen", "health_listen", "metrics_listen")
    )
    container = block("containers")
    named = {
        value("name", [(0, text)]): int(value("containerPort", [(0, text)]))
        for _, text in block("ports", container)
    }
    assert named == {"grpc": api, "health": health, "metrics": metrics}
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert int(value("port", block(probe, container))) == health, probe
    # Other pods reach the API and the metrics, never the plaintext health port.
    service = block("spec")  # the Service's, the first document's
    assert sorted(int(value("port", [line])) for line in block("ports", service)) == [
        api,
        metrics,
    ]
    ingress = block("ingress")
    assert sorted(int(value("port", [line])) for line in ingress if "{port:" in line[1]) == [
        api,
        metrics,
    ]
    # The unauthenticated /metrics only to the monitoring namespace, not every pod.
    rules = [text for _, text in ingress]
    assert rules.index(f"- {{port: {metrics}}}") < rules.index("from:")
    assert "matchLabels: {kubernetes.io/metadata.name: monitoring}" in rules
    assert any(f'prometheus.io/port: "{metrics}"' in text for _, text in block("template"))


def test_the_node_s_paths_are_on_the_volumes_the_pod_mounts() -> None:
    params = serve_command().make_context("serve", serve_arguments()).params
    container = block("containers")
    mounts = {
        value("name", [(0, text)]): value("mountPath", [(0, text)])
        for _, text in block("volumeMounts", container)
    }
    # The root filesystem is read-only: what the node writes lives on a volume.
    assert value("readOnlyRootFilesystem", container) == "true"
    assert Path(params["data_dir"]).is_relative_to(mounts["data"])
    assert Path(params["data_dir"]) != Path(mounts["data"])  # made private: its own directory
    assert Path(params["master_key_file"]).is_relative_to(mounts["keys"])
    assert Path(container_env()["NUMBA_CACHE_DIR"]).is_relative_to(mounts["tmp"])


def test_the_image_runs_the_user_and_the_command_the_manifest_expects() -> None:
    dockerfile = DOCKERFILE.read_text()
    pod = block("securityContext", block("template"))
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert user is not None
    assert (value("runAsUser", pod), value("runAsGroup", pod)) == user.groups()
    assert value("runAsNonRoot", pod) == "true"
    assert re.search(r'^ENTRYPOINT \["tierstore"\]$', dockerfile, re.MULTILINE)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "tierstore" in scripts
    for copied in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for source in copied.split():
            assert (ROOT / source).exists(), source


def test_the_container_requests_the_cpu_and_memory_it_runs_on() -> None:
    # Without requests the pod is BestEffort: the first one the kubelet evicts when its
    # host runs short of memory, and scheduled onto a host with none to spare.
    resources = block("resources", block("containers"))
    assert set(mapping("requests", resources)) == {"cpu", "memory"}
    assert "memory" in mapping("limits", resources)


def test_the_pod_gets_no_kubernetes_api_token() -> None:
    # The node never calls the Kubernetes API: a token mounted in its pod would only hand
    # whoever took over the process the service account's rights.
    assert value("automountServiceAccountToken", block("template")) == "false"


def test_the_image_installs_the_tested_version_of_every_dependency() -> None:
    # `pip install .` alone took whatever versions were newest on the day of the build:
    # never tested together, and different from one node's image to the next.
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"pip install .*-c deploy/constraints\.txt \.", dockerfile)
    pins: dict[str, str] = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for written in dependencies["dependencies"]:
        requirement = Requirement(written)
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned is not None, f"{requirement.name} is not pinned"
        assert requirement.specifier.contains(pinned, prereleases=True), (written, pinned)


def test_the_pod_gets_no_variables_for_the_namespace_s_services() -> None:
    # The kubelet gives a pod variables naming each Service of its namespace: one named
    # tierstore-archive (an S3 server for the archive, say) gave TIERSTORE_ARCHIVE_SERVICE_HOST
    # and more, and the node refuses to start on a TIERSTORE_ variable that names no
    # setting.
    assert value("enableServiceLinks", block("template")) == "false"


def test_the_certificate_names_the_pod_by_every_name_the_cluster_s_dns_gives_it() -> None:
    # A client in another namespace (training jobs in theirs, the store in its own)
    # reaches the pod as <pod>.tierstore.<namespace>[.svc[.cluster.local]]: a certificate
    # naming only <pod>.tierstore failed its host name check.
    params = serve_command().make_context("serve", serve_arguments()).params
    assert {
        "tierstore-0.tierstore",
        "tierstore-0.tierstore.storage",
        "tierstore-0.tierstore.storage.svc",
        "tierstore-0.tierstore.storage.svc.cluster.local",
    } <= set(params["hostname"])


def test_the_node_uploads_several_parts_at_once_to_its_remote_archive() -> None:
    # One 8 MiB part after another (the default, for an archive on the node's own cores)
    # pays a remote store's latency and one connection's bandwidth for every part: with
    # 0.3 s a request, 256 MiB took twice as long to archive as with 8 parts at once.
    assert node_settings().mover_threads > 1


def test_no_two_nodes_are_scheduled_onto_one_host() -> None:
    # "One tierstore node per GPU host" was said and not enforced: with replicas above 1,
    # two pods could land on one host with two local volumes, splitting its NVMe.
    anti = block("requiredDuringSchedulingIgnoredDuringExecution", block("podAntiAffinity"))
    assert value("topologyKey", anti) == "kubernetes.io/hostname"
    assert value("app", anti) == "tierstore"
