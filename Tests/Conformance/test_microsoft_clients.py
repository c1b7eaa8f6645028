"""Unmodified Microsoft clients against the entra-emulator: each must get its token as it would
from Entra, and each mistake must get Entra's status and AADSTS code. A failure here means the
emulator is stricter, or more lenient, than Entra."""
import base64
import json
import ssl

import jwt
import msal
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CertificateCredential, ClientAssertionCredential

GRAPH = "https://graph.microsoft.com/.default"


def header(token):
    segment = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def claims(token):
    return jwt.decode(token, options={"verify_signature": False})


def msal_app(emulator, app, credential):
    return msal.ConfidentialClientApplication(
        app["appId"], authority=f"{emulator.url}/{app['tenantId']}", client_credential=credential,
        instance_discovery=False)


def acquire(emulator, app, credential, scope=GRAPH):
    return msal_app(emulator, app, credential).acquire_token_for_client(scopes=[scope])


def assert_token(result, app):
    assert "access_token" in result, result
    assert claims(result["access_token"])["appid"] == app["appId"]


# --- MSAL Python ---------------------------------------------------------------------------------

def test_msal_signs_what_entra_accepts_padded_thumbprints_and_x5c_with_line_breaks(software):
    """The precondition of this suite: MSAL's own assertion code writes padded base64url thumbprints
    and PEM bodies with line breaks in x5c (which the emulator refused before)."""
    from msal.oauth2cli.assertion import JwtAssertionCreator
    from msal.application import extract_certs
    sha256 = software.certificate.fingerprint(__import__("cryptography").hazmat.primitives.hashes.SHA256()).hex()
    creator = JwtAssertionCreator(software.key_pem, algorithm="PS256", sha256_thumbprint=sha256,
                                  headers={"x5c": extract_certs(software.cert_pem)})
    token = creator.create_normal_assertion(audience="https://example/token", issuer="me")
    token = token.decode() if isinstance(token, bytes) else token
    h = header(token)
    assert h["x5t#S256"].endswith("=")
    assert "\n" in h["x5c"][0]


def test_msal_certificate_pem_with_public_certificate(emulator, software):
    # PS256 + padded x5t#S256 + x5c with line breaks.
    assert_token(acquire(emulator, software.app, {"private_key": software.key_pem, "public_certificate": software.cert_pem}), software.app)


def test_msal_thumbprint_only(emulator, software):
    # RS256 + padded SHA-1 x5t.
    assert_token(acquire(emulator, software.app, {"private_key": software.key_pem, "thumbprint": software.sha1}), software.app)


def test_msal_pfx(emulator, software):
    credential = {"private_key_pfx_path": str(software.pfx_file), "passphrase": software.pfx_password}
    assert_token(acquire(emulator, software.app, credential), software.app)
    assert_token(acquire(emulator, software.app, dict(credential, public_certificate=True)), software.app)


def test_msal_client_assertion_string_from_p11jwt(emulator, hardware):
    app = hardware.app
    assertion = hardware.assertion(app["tenantId"], app["appId"], emulator.url)
    assert_token(acquire(emulator, app, {"client_assertion": assertion}), app)


def test_msal_client_assertion_callable_from_p11jwt(emulator, hardware):
    app = hardware.app
    calls = []

    def fresh():
        calls.append(1)
        return hardware.assertion(app["tenantId"], app["appId"], emulator.url)

    assert_token(acquire(emulator, app, {"client_assertion": fresh}), app)
    assert calls


def test_msal_unregistered_certificate_is_700027(emulator, software, workdir):
    from conftest import SoftwareIdentity
    stranger = SoftwareIdentity(workdir, "stranger")
    result = acquire(emulator, software.app, {"private_key": stranger.key_pem, "public_certificate": stranger.cert_pem})
    assert result.get("error") == "invalid_client" and 700027 in result.get("error_codes", []), result
    assert stranger.sha1 in result["error_description"]


def test_msal_scope_mistakes_get_entras_codes(emulator, software):
    credential = {"private_key": software.key_pem, "public_certificate": software.cert_pem}
    result = acquire(emulator, software.app, credential, scope="https://graph.microsoft.com/User.Read")
    assert result.get("error") == "invalid_scope" and 1002012 in result["error_codes"], result
    result = acquire(emulator, software.app, credential, scope="api://nobody/.default")
    assert result.get("error") == "invalid_resource" and 500011 in result["error_codes"], result


def test_msal_expired_certificate_is_1000502(emulator, workdir):
    from conftest import SoftwareIdentity
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    old = SoftwareIdentity(workdir, "expired")
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(old.certificate.subject).issuer_name(old.certificate.issuer)
               .public_key(old.key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=30)).not_valid_after(now - datetime.timedelta(days=1)))
    cert = builder.sign(old.key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    path = workdir / "expired-cert.pem"
    path.write_text(pem)
    app = emulator.create_app("expired-app", path)
    result = acquire(emulator, app, {"private_key": old.key_pem, "public_certificate": pem})
    assert 1000502 in result.get("error_codes", []), result


# --- azure-identity ------------------------------------------------------------------------------

def identity_kwargs(emulator):
    return {"authority": emulator.url, "disable_instance_discovery": True}


def test_azure_identity_certificate_credential_pem(emulator, software):
    app = software.app
    credential = CertificateCredential(app["tenantId"], app["appId"], certificate_path=str(software.key_and_cert_file),
                                       **identity_kwargs(emulator))
    assert claims(credential.get_token(GRAPH).token)["appid"] == app["appId"]
    chained = CertificateCredential(app["tenantId"], app["appId"], certificate_path=str(software.key_and_cert_file),
                                    send_certificate_chain=True, **identity_kwargs(emulator))
    assert claims(chained.get_token(GRAPH).token)["appid"] == app["appId"]


def test_azure_identity_certificate_credential_pfx(emulator, software):
    app = software.app
    credential = CertificateCredential(app["tenantId"], app["appId"], certificate_path=str(software.pfx_file),
                                       password=software.pfx_password, **identity_kwargs(emulator))
    assert claims(credential.get_token(GRAPH).token)["appid"] == app["appId"]


def test_azure_identity_client_assertion_credential_fed_by_p11jwt(emulator, hardware):
    app = hardware.app
    credential = ClientAssertionCredential(
        app["tenantId"], app["appId"], lambda: hardware.assertion(app["tenantId"], app["appId"], emulator.url),
        **identity_kwargs(emulator))
    assert claims(credential.get_token(GRAPH).token)["appid"] == app["appId"]


def test_azure_identity_unregistered_certificate_is_refused_with_700027(emulator, software, workdir):
    from conftest import SoftwareIdentity
    stranger = SoftwareIdentity(workdir, "stranger-sdk")
    app = software.app
    credential = CertificateCredential(app["tenantId"], app["appId"], certificate_path=str(stranger.key_and_cert_file),
                                       **identity_kwargs(emulator))
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        credential.get_token(GRAPH)


# --- A resource API validating the tokens it receives ---------------------------------------------

def validate_like_a_resource_api(emulator, tenant, token, audience):
    """Discovery, then the JWKS it names, then PyJWT's checks of signature, issuer and audience."""
    metadata = requests.get(f"{emulator.url}/{tenant}/v2.0/.well-known/openid-configuration", timeout=10).json()
    context = ssl.create_default_context(cafile=emulator.ca)
    keys = jwt.PyJWKClient(metadata["jwks_uri"], ssl_context=context)
    signing_key = keys.get_signing_key_from_jwt(token)
    return jwt.decode(token, signing_key.key, algorithms=["RS256"], audience=audience, issuer=metadata["issuer"])


def test_a_resource_api_validates_tokens_by_discovery_and_jwks(emulator, software, hardware, api):
    for identity, credential in [
        (software, {"private_key": software.key_pem, "public_certificate": software.cert_pem}),
        (hardware, {"client_assertion": hardware.assertion(hardware.app["tenantId"], hardware.app["appId"], emulator.url)}),
    ]:
        result = acquire(emulator, identity.app, credential, scope="api://orders/.default")
        assert "access_token" in result, result
        validated = validate_like_a_resource_api(emulator, identity.app["tenantId"], result["access_token"], api["appId"])
        assert validated["azp"] == identity.app["appId"]
        assert validated["roles"] == ["Orders.Read"]
        assert validated["ver"] == "2.0"
        # A token for Graph is not a token for this API.
        graph = acquire(emulator, identity.app, credential)
        with pytest.raises((jwt.InvalidAudienceError, jwt.InvalidIssuerError)):
            validate_like_a_resource_api(emulator, identity.app["tenantId"], graph["access_token"], api["appId"])


def test_every_route_answers_json(emulator, software):
    tenant = software.app["tenantId"]
    get = requests.get(f"{emulator.url}/{tenant}/oauth2/v2.0/token", timeout=10)
    assert get.status_code == 405 and get.json()["error_codes"] == [900561]
    missing = requests.get(f"{emulator.url}/nowhere", timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()


# --- Through the p11jwt agent: the Azure SDK's managed-identity and workload-identity paths -------

@pytest.fixture(scope="module")
def agent(emulator, hardware, workdir):
    from conftest import RunningAgent
    app = hardware.app
    runtime = workdir / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    running = RunningAgent(
        ["--key", hardware.key, "--managed-identity", "--assertion-file", runtime / "assertion.jwt", "--tenant", app["tenantId"],
         "--client-id", app["appId"], "--authority-host", emulator.url, "--ca-file", emulator.ca, "--pin-file", hardware.pin_file],
        dict(hardware.env, XDG_RUNTIME_DIR=str(runtime)), workdir, "agent")
    assert "IDENTITY_ENDPOINT" in running.variables, running.log_file.read_text()
    yield running.variables
    running.stop()


@pytest.mark.parametrize("kind", ["ManagedIdentityCredential", "WorkloadIdentityCredential"])
def test_azure_identity_through_the_agent(agent, hardware, kind, monkeypatch):
    import azure.identity
    for name, value in agent.items():
        monkeypatch.setenv(name, value)
    credential = getattr(azure.identity, kind)()
    token = credential.get_token(GRAPH).token
    assert claims(token)["appid"] == hardware.app["appId"]


def test_a_managed_identity_request_for_another_identity_is_refused(agent, hardware, monkeypatch):
    """ManagedIdentityCredential(client_id=X) as azure-identity sends it (client_id in the query):
    the agent's own client id gets its token; another is refused as App Service refuses an
    identity it does not have, never answered with this app's token."""
    import uuid
    import azure.identity
    from azure.core.exceptions import ClientAuthenticationError
    for name, value in agent.items():
        monkeypatch.setenv(name, value)
    own = azure.identity.ManagedIdentityCredential(client_id=hardware.app["appId"]).get_token(GRAPH).token
    assert claims(own)["appid"] == hardware.app["appId"]
    with pytest.raises(ClientAuthenticationError) as refused:
        azure.identity.ManagedIdentityCredential(client_id=str(uuid.uuid4())).get_token(GRAPH)
    assert "No User Assigned or Delegated Managed Identity found" in str(refused.value)
