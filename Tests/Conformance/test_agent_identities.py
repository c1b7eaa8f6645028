"""One agent, many identities: the config file's `identities` list served by one process on one
token. azure-identity's ManagedIdentityCredential(client_id=…) selects the application the way
it selects a user-assigned identity; the Unix-socket API selects it by name; an identity's
allowUids keep other users away from it and from its key (a second uid, via setpriv)."""
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import BIN, RunningAgent, run

GRAPH = "https://graph.microsoft.com/.default"
NOBODY = 65534


def claims(token):
    import base64
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.fixture(scope="module")
def identities(emulator, hardware, workdir):
    second_key, second = hardware.another_app(emulator, workdir, "billing")
    first = hardware.app
    config = workdir / "agent-identities.yaml"
    config.write_text(f"""pin-file: {hardware.pin_file}
identities:
  - name: orders
    tenant: {first['tenantId']}
    clientId: {first['appId']}
    key: "{hardware.key}"
    authorityHost: {emulator.url}
    caFile: {emulator.ca}
    default: true
  - name: billing
    tenant: {second['tenantId']}
    clientId: {second['appId']}
    objectId: {second['id']}
    key: "{second_key}"
    authorityHost: {emulator.url}
    caFile: {emulator.ca}
    allowUids: [{NOBODY - 1}]
""")
    # A socket directory other uids can reach (the agent makes it 0711 when it shares the socket).
    socket_dir = tempfile.mkdtemp(prefix="p11jwt-ids-")
    socket = os.path.join(socket_dir, "agent.sock")
    running = RunningAgent(["--config", config, "--managed-identity", "--socket", socket, "--allow-uid", NOBODY,
                            "--key-vault", "--key-vault-dir", workdir / "ids-kv"], hardware.env, workdir, "ids-agent")
    variables = running.variables
    assert "IDENTITY_ENDPOINT" in variables, running.log_file.read_text()
    yield variables, first, second, second_key
    running.stop()
    shutil.rmtree(socket_dir, ignore_errors=True)


def test_managed_identity_credential_selects_the_application_by_client_id(identities, monkeypatch):
    import azure.identity
    from azure.core.exceptions import ClientAuthenticationError
    variables, first, second, _ = identities
    monkeypatch.setenv("IDENTITY_ENDPOINT", variables["IDENTITY_ENDPOINT"])
    monkeypatch.setenv("IDENTITY_HEADER", variables["IDENTITY_HEADER"])
    for app in (first, second):
        token = azure.identity.ManagedIdentityCredential(client_id=app["appId"]).get_token(GRAPH).token
        assert claims(token)["appid"] == app["appId"]
    # None named: the default identity.
    assert claims(azure.identity.ManagedIdentityCredential().get_token(GRAPH).token)["appid"] == first["appId"]
    # By object id, as ManagedIdentityCredential(identity_config={"object_id": …}) asks.
    by_object = azure.identity.ManagedIdentityCredential(identity_config={"object_id": second["id"]}).get_token(GRAPH).token
    assert claims(by_object)["appid"] == second["appId"]
    with pytest.raises(ClientAuthenticationError):
        azure.identity.ManagedIdentityCredential(client_id=str(uuid.uuid4())).get_token(GRAPH)


def socket_call(socket, path, body, uid=None):
    command = ["curl", "-sS", "--unix-socket", socket, "-H", "content-type: application/json", "-d", json.dumps(body),
               "-w", "\n%{http_code}", f"http://agent{path}"]
    if uid is not None:
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] + command
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text, status = result.stdout.rsplit("\n", 1)
    return int(status), json.loads(text)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second uid (CI runs as root)")
def test_an_identity_limited_to_other_uids_is_refused_with_its_key(identities, hardware):
    variables, first, second, second_key = identities
    socket = variables["P11JWT_AGENT_SOCK"]
    # The agent's own uid may use every identity.
    status, answer = socket_call(socket, "/v1/token", {"identity": "billing"})
    assert status == 200 and claims(answer["access_token"])["appid"] == second["appId"], answer
    # Another uid the agent admits: the unrestricted identity and its key, yes …
    status, answer = socket_call(socket, "/v1/token", {"identity": "orders"}, uid=NOBODY)
    assert status == 200 and claims(answer["access_token"])["appid"] == first["appId"], answer
    digest = "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    status, _ = socket_call(socket, "/v1/sign", {"key": hardware.key, "alg": "RS256", "value": digest}, uid=NOBODY)
    assert status == 200
    # … the identity limited to another uid, and its key by any route, no.
    for path, body in (("/v1/token", {"identity": "billing"}), ("/v1/token", {"identity": second["appId"]}),
                       ("/v1/sign", {"key": second_key, "alg": "RS256", "value": digest}),
                       ("/v1/assertion", {"key": second_key}), ("/v1/assertion", {"identity": "billing"})):
        status, answer = socket_call(socket, path, body, uid=NOBODY)
        assert status == 403 and answer["error"] == "forbidden", (path, body, answer)
    status, answer = socket_call(socket, "/v1/token", {"identity": "nobody-knows"})
    assert status == 400 and answer["error"] == "unknownIdentity", answer


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second uid (CI runs as root)")
def test_the_managed_identity_endpoint_keeps_a_limited_identity_to_its_uids(identities):
    """Any local process reaches the loopback endpoint; an identity's allowUids hold there too
    (the connection's owner read from the kernel's socket table), as SO_PEERCRED makes them hold
    on the socket. Requests as azure-identity sends them, from other uids through setpriv."""
    variables, first, second, _ = identities

    def request(client_id, uid):
        url = f"{variables['IDENTITY_ENDPOINT']}?api-version=2019-08-01&resource=https://graph.microsoft.com&client_id={client_id}"
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "curl", "-sS",
                   "-H", "@-", "-w", "\n%{http_code}", url]  # the secret header on stdin, not in argv
        result = subprocess.run(command, input=f"X-IDENTITY-HEADER: {variables['IDENTITY_HEADER']}\n",
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        text, status = result.stdout.rsplit("\n", 1)
        return int(status), json.loads(text)

    # billing is limited to NOBODY - 1: that uid gets its token …
    status, answer = request(second["appId"], NOBODY - 1)
    assert status == 200 and claims(answer["access_token"])["appid"] == second["appId"], answer
    # … another uid with the right header does not,
    status, answer = request(second["appId"], NOBODY)
    assert status == 403 and answer["error"] == "forbidden" and f"uid {NOBODY}" in answer["error_description"], answer
    # and gets the identities no one limited.
    status, answer = request(first["appId"], NOBODY)
    assert status == 200 and claims(answer["access_token"])["appid"] == first["appId"], answer


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second uid (CI runs as root)")
def test_the_key_vault_endpoint_signs_with_a_limited_identitys_key_only_for_its_uids(identities):
    """The Key Vault surface serves every key on the token by its label; the key of an identity
    limited to some uids ('billing') signs only for them, whoever holds a vault token."""
    import http.client
    import urllib.parse
    variables, _, _, _ = identities
    vault = variables["AZURE_KEYVAULT_URL"]
    # A vault token (the agent issues them to anyone with the header), used by every uid below.
    endpoint = urllib.parse.urlsplit(variables["IDENTITY_ENDPOINT"])
    resource = "https://0.0.1:" + str(urllib.parse.urlsplit(vault).port)
    connection = http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=30)
    connection.request("GET", f"{endpoint.path}?api-version=2019-08-01&resource={urllib.parse.quote(resource)}",
                       headers={"X-IDENTITY-HEADER": variables["IDENTITY_HEADER"]})
    bearer = json.loads(connection.getresponse().read())["access_token"]
    connection.close()
    # The vault's CA where other uids can read it.
    ca_dir = tempfile.mkdtemp(prefix="p11jwt-kv-ca-")
    os.chmod(ca_dir, 0o755)
    ca = os.path.join(ca_dir, "ca.pem")
    shutil.copy(variables["P11JWT_KEY_VAULT_CA"], ca)
    os.chmod(ca, 0o644)

    def sign(name, uid):
        body = json.dumps({"alg": "RS256", "value": "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"})
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "curl", "-sS", "--cacert", ca,
                   "-H", "@-", "-H", "content-type: application/json", "-d", body,
                   "-w", "\n%{http_code}", f"{vault}keys/{name}/sign?api-version=7.4"]
        result = subprocess.run(command, input=f"Authorization: Bearer {bearer}\n", capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        text, status = result.stdout.rsplit("\n", 1)
        return int(status), json.loads(text)

    try:
        status, answer = sign("billing", NOBODY - 1)
        assert status == 200 and answer["value"], answer
        status, answer = sign("billing", NOBODY)
        assert status == 403 and answer["error"]["code"] == "Forbidden" and f"uid {NOBODY}" in answer["error"]["message"], answer
        status, answer = sign("app", NOBODY)
        assert status == 200 and answer["value"], answer
    finally:
        shutil.rmtree(ca_dir, ignore_errors=True)


def managed_identity_token(variables, client_id):
    """One App Service managed-identity request, as azure-identity sends it: (status, body)."""
    import http.client
    import urllib.parse
    url = urllib.parse.urlsplit(variables["IDENTITY_ENDPOINT"])
    query = urllib.parse.urlencode({"api-version": "2019-08-01", "resource": "https://graph.microsoft.com", "client_id": client_id})
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request("GET", f"{url.path}?{query}", headers={"X-IDENTITY-HEADER": variables["IDENTITY_HEADER"]})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_sighup_adds_an_identity_without_dropping_a_request(emulator, hardware, workdir):
    """SIGHUP (systemctl reload) re-reads the identities: one added is served, requests for the
    one kept never fail meanwhile (nor lose its cached token), and a broken file changes nothing."""
    import signal
    import threading
    key, added = hardware.another_app(emulator, workdir, "reloaded")
    first = hardware.app
    entry = """  - name: {name}
    clientId: {client}
    key: "{key}"
"""
    head = f"pin-file: {hardware.pin_file}\ntenant: {first['tenantId']}\nauthority-host: {emulator.url}\nca-file: {emulator.ca}\nidentities:\n"
    config = workdir / "agent-reload.yaml"
    config.write_text(head + entry.format(name="orders", client=first["appId"], key=hardware.key))
    socket_dir = tempfile.mkdtemp(prefix="p11jwt-reload-")
    socket = os.path.join(socket_dir, "agent.sock")
    running = RunningAgent(["--config", config, "--managed-identity", "--socket", socket], hardware.env, workdir, "reload-agent")
    try:
        variables = running.variables
        assert managed_identity_token(variables, first["appId"])[0] == 200
        status, answer = managed_identity_token(variables, added["appId"])
        assert status == 400, answer

        statuses, stop = [], threading.Event()

        def hammer():
            while not stop.is_set():
                statuses.append(managed_identity_token(variables, first["appId"])[0])
        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        config.write_text(head + entry.format(name="orders", client=first["appId"], key=hardware.key)
                          + entry.format(name="reloaded", client=added["appId"], key=key))
        running.process.send_signal(signal.SIGHUP)
        deadline = time.time() + 20
        while time.time() < deadline and managed_identity_token(variables, added["appId"])[0] != 200:
            time.sleep(0.1)
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join()
        status, answer = managed_identity_token(variables, added["appId"])
        assert status == 200 and claims(answer["access_token"])["appid"] == added["appId"], answer
        assert len(statuses) > 20 and set(statuses) == {200}, f"{len(statuses)} requests: {sorted(set(statuses))}"
        report = json.loads(run([BIN, "agent", "status", "--socket", socket, "--output", "json"]).stdout)
        kept = {i["name"]: i for i in report["identities"]}
        assert set(kept) == {"orders", "reloaded"}
        # The identity kept, kept its broker: its token is still held, not fetched again.
        assert [t["scope"] for t in kept["orders"]["cachedTokens"]] == ["https://graph.microsoft.com/.default"]

        # A broken file: refused, said in the status, and the identities before keep working.
        config.write_text(head + "  - name: broken\n")
        running.process.send_signal(signal.SIGHUP)
        deadline = time.time() + 20
        errors = []
        while time.time() < deadline and not errors:
            report = json.loads(run([BIN, "agent", "status", "--socket", socket, "--output", "json"]).stdout)
            errors = [e for e in report["recentErrors"] if e["operation"] == "reload"]
            time.sleep(0.1)
        assert errors and "broken" in errors[0]["message"], report["recentErrors"]
        assert managed_identity_token(variables, added["appId"])[0] == 200
        assert running.process.poll() is None
    finally:
        running.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
