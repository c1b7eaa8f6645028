"""The agent's Key Vault keys surface, driven by the unmodified azure-keyvault-keys SDK
(CryptographyClient with ManagedIdentityCredential: the vault's bearer tokens come from the
agent's own managed-identity endpoint after Key Vault's challenge) and by plain HTTP calls that
reproduce the PowerShell recipe for a client assertion signed by Key Vault. Every signature is
checked with `cryptography` against the public key p11jwt exports from the token (not the JWK
the vault serves), and the assertion is exchanged at the Entra emulator."""
import base64
import hashlib
import json
import re
import time
import uuid

import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from conftest import BIN, RunningAgent, run

API_VERSION = "7.4"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def vault(emulator, hardware, workdir):
    """An agent with --key-vault on the hardware token: RSA key 'app' (the app's registered
    certificate) and EC P-256 key 'kvec'."""
    ec_key = run([BIN, "keygen", "--token", f"pkcs11:token={hardware.label}", "--label", "kvec", "--key-type", "ec:p256",
                  "--pin-file", hardware.pin_file], env=hardware.env).stdout.strip()
    app = hardware.app
    runtime = workdir / "run-kv"
    runtime.mkdir(mode=0o700, exist_ok=True)
    running = RunningAgent(
        ["--key", hardware.key, "--key-vault", "--key-vault-dir", workdir / "kv-ca", "--tenant", app["tenantId"],
         "--client-id", app["appId"], "--authority-host", emulator.url, "--ca-file", emulator.ca, "--pin-file", hardware.pin_file],
        dict(hardware.env, XDG_RUNTIME_DIR=str(runtime)), workdir, "kv-agent")
    variables = running.variables
    assert "AZURE_KEYVAULT_URL" in variables, running.log_file.read_text()
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+/", variables["AZURE_KEYVAULT_URL"])
    public = {
        "app": serialization.load_pem_public_key(
            run([BIN, "export", hardware.key, "--public-key", "--pin-file", hardware.pin_file], env=hardware.env).stdout.encode()),
        "kvec": serialization.load_pem_public_key(
            run([BIN, "export", ec_key, "--public-key", "--pin-file", hardware.pin_file], env=hardware.env).stdout.encode()),
    }
    yield variables, public
    running.stop()


def check(public_key, algorithm, digest, signature):
    """`cryptography`'s verdict on a Key Vault-format signature (raw r‖s for EC)."""
    prehashed = utils.Prehashed(hashes.SHA256())
    try:
        if algorithm == "RS256":
            public_key.verify(signature, digest, padding.PKCS1v15(), prehashed)
        elif algorithm == "PS256":
            public_key.verify(signature, digest, padding.PSS(padding.MGF1(hashes.SHA256()), 32), prehashed)
        else:
            half = len(signature) // 2
            der = utils.encode_dss_signature(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))
            public_key.verify(der, digest, ec.ECDSA(prehashed))
        return True
    except InvalidSignature:
        return False


@pytest.mark.parametrize("algorithm,name", [("RS256", "app"), ("PS256", "app"), ("ES256", "kvec")])
def test_cryptography_client_signs_through_the_agent(vault, algorithm, name, monkeypatch):
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
    variables, public = vault
    monkeypatch.setenv("IDENTITY_ENDPOINT", variables["IDENTITY_ENDPOINT"])
    monkeypatch.setenv("IDENTITY_HEADER", variables["IDENTITY_HEADER"])
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", variables["P11JWT_KEY_VAULT_CA"])
    client = CryptographyClient(f"{variables['AZURE_KEYVAULT_URL']}keys/{name}", ManagedIdentityCredential())
    digest = hashlib.sha256(f"signed through the agent with {algorithm}".encode()).digest()
    result = client.sign(SignatureAlgorithm(algorithm), digest)
    assert result.key_id.startswith(f"{variables['AZURE_KEYVAULT_URL']}keys/{name}/")
    assert check(public[name], algorithm, digest, result.signature)
    assert not check(public[name], algorithm, hashlib.sha256(b"another message").digest(), result.signature)
    # The SDK verifies with the JWK it fetched; a tampered signature fails.
    assert client.verify(SignatureAlgorithm(algorithm), digest, result.signature).is_valid
    tampered = bytes([result.signature[0] ^ 1]) + result.signature[1:]
    assert not client.verify(SignatureAlgorithm(algorithm), digest, tampered).is_valid


def vault_token(variables):
    """Key Vault's challenge, then a managed-identity token for the resource it names."""
    url = variables["AZURE_KEYVAULT_URL"]
    ca = variables["P11JWT_KEY_VAULT_CA"]
    challenge = requests.get(f"{url}keys/app", params={"api-version": API_VERSION}, verify=ca, timeout=10)
    assert challenge.status_code == 401
    header = challenge.headers["WWW-Authenticate"]
    assert header.startswith("Bearer ") and 'authorization="https://login.microsoftonline.com/' in header
    resource = re.search(r'resource="([^"]+)"', header).group(1)
    answer = requests.get(variables["IDENTITY_ENDPOINT"], params={"resource": resource, "api-version": "2019-08-01"},
                          headers={"X-IDENTITY-HEADER": variables["IDENTITY_HEADER"]}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["resource"] == resource
    return answer.json()["access_token"]


def test_the_rest_recipe_builds_an_assertion_the_emulator_accepts(vault, emulator, hardware):
    """What the PowerShell recipe does against Key Vault: an MSI token, the key's certificate
    thumbprint, sign the SHA-256 of header.payload with POST …/sign, append the signature."""
    variables, public = vault
    url, ca = variables["AZURE_KEYVAULT_URL"], variables["P11JWT_KEY_VAULT_CA"]
    bearer = {"Authorization": f"Bearer {vault_token(variables)}"}
    key = requests.get(f"{url}keys/app", params={"api-version": API_VERSION}, headers=bearer, verify=ca, timeout=10)
    assert key.status_code == 200, key.text
    jwk = key.json()["key"]
    assert jwk["kty"] == "RSA-HSM" and sorted(jwk["key_ops"]) == ["sign", "verify"]
    assert int.from_bytes(unb64url(jwk["n"]), "big") == public["app"].public_numbers().n
    listed = requests.get(f"{url}keys", params={"api-version": API_VERSION}, headers=bearer, verify=ca, timeout=10)
    assert jwk["kid"] in [item["kid"] for item in listed.json()["value"]]

    app = hardware.app
    der = open(hardware.cert_file).read()
    der = base64.b64decode("".join(line for line in der.splitlines() if "-----" not in line))
    audience = f"{emulator.url}/{app['tenantId']}/oauth2/v2.0/token"
    now = int(time.time())
    head = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "x5t": b64url(hashlib.sha1(der).digest())}).encode())
    body = b64url(json.dumps({"aud": audience, "iss": app["appId"], "sub": app["appId"], "jti": str(uuid.uuid4()),
                              "nbf": now, "iat": now, "exp": now + 600}).encode())
    digest = hashlib.sha256(f"{head}.{body}".encode()).digest()
    signed = requests.post(f"{jwk['kid']}/sign", params={"api-version": API_VERSION}, headers=bearer, verify=ca, timeout=10,
                           json={"alg": "RS256", "value": b64url(digest)})
    assert signed.status_code == 200, signed.text
    assert signed.json()["kid"] == jwk["kid"]
    signature = unb64url(signed.json()["value"])
    assert check(public["app"], "RS256", digest, signature)
    # The vault's verify (done by the token) agrees, and refuses a tampered signature.
    for value, expected in ((signature, True), (bytes([signature[0] ^ 1]) + signature[1:], False)):
        verified = requests.post(f"{jwk['kid']}/verify", params={"api-version": API_VERSION}, headers=bearer, verify=ca,
                                 timeout=10, json={"alg": "RS256", "digest": b64url(digest), "value": b64url(value)})
        assert verified.status_code == 200 and verified.json() == {"value": expected}, verified.text

    token = requests.post(audience, verify=emulator.ca, timeout=10, data={
        "client_id": app["appId"], "grant_type": "client_credentials", "scope": "https://graph.microsoft.com/.default",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": f"{head}.{body}.{b64url(signature)}"})
    assert token.status_code == 200, token.text
    claims = json.loads(unb64url(token.json()["access_token"].split(".")[1]))
    assert claims["appid"] == app["appId"]


def test_errors_have_key_vaults_status_and_shape(vault):
    variables, _ = vault
    url, ca = variables["AZURE_KEYVAULT_URL"], variables["P11JWT_KEY_VAULT_CA"]
    bearer = {"Authorization": f"Bearer {vault_token(variables)}"}
    digest = b64url(hashlib.sha256(b"x").digest())

    def call(method, path, expected_status, expected_code, headers=bearer, params=None, body=None):
        answer = requests.request(method, f"{url}{path}", params={"api-version": API_VERSION} if params is None else params,
                                  headers=headers, json=body, verify=ca, timeout=10)
        assert answer.status_code == expected_status, (path, answer.status_code, answer.text)
        error = answer.json()["error"]
        assert error["code"] == expected_code and error["message"], answer.text
        return answer

    missing = call("GET", "keys/app", 401, "Unauthorized", headers={})
    assert "resource=" in missing.headers["WWW-Authenticate"]
    call("GET", "keys/app", 401, "Unauthorized", headers={"Authorization": "Bearer not-a-token-it-issued"})
    call("GET", "keys/no-such-key", 404, "KeyNotFound")
    call("GET", "keys/app/00112233445566778899aabbccddeeff", 404, "KeyNotFound")
    call("POST", "keys/app/sign", 400, "BadParameter", body={"alg": "HS256", "value": digest})
    call("POST", "keys/app/sign", 400, "BadParameter", body={"alg": "ES256", "value": digest})
    call("POST", "keys/app/sign", 400, "BadParameter", body={"alg": "RS256", "value": b64url(b"short")})
    call("POST", "keys/app/sign", 400, "BadParameter", body={"alg": "RS384", "value": digest})
    call("POST", "keys/kvec/verify", 400, "BadParameter", body={"alg": "ES256", "digest": digest, "value": "***"})
    call("GET", "keys/app", 400, "BadParameter", params={})
    call("GET", "keys/app", 400, "BadParameter", params={"api-version": "1999-01-01"})
