"""Fixtures for the conformance suite: the real entra-emulator over HTTPS, applications whose
certificates are a software key (for MSAL / azure-identity's own certificate paths) and a SoftHSM
key (for p11jwt), and an API resource. Run by scripts/test with unmodified, current releases of
msal, azure-identity and PyJWT."""
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
import datetime

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("P11JWT_BIN", ROOT / ".build/debug/p11jwt"))
EMULATOR_BIN = Path(os.environ.get("ENTRA_EMULATOR_BIN", ROOT / ".build/debug/entra-emulator"))
PIN = "123456"


def run(args, env=None, check=True):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0]} {args[1:3]} exited {result.returncode}: {result.stderr}")
    return result


class Emulator:
    def __init__(self, state):
        self.state = state
        self.log = open(state / "serve.log", "w")
        self.process = subprocess.Popen([str(EMULATOR_BIN), "serve", "--state-dir", str(state)],
                                        stdout=subprocess.DEVNULL, stderr=self.log)
        url_file = state / "url"
        deadline = time.time() + 60
        while time.time() < deadline and self.process.poll() is None:
            if url_file.exists() and url_file.read_text().endswith("\n"):
                break
            time.sleep(0.05)
        assert url_file.exists(), f"entra-emulator did not start: {(state / 'serve.log').read_text()}"
        self.url = url_file.read_text().strip()
        self.ca = str(state / "ca.pem")

    def admin(self, *args):
        return json.loads(run([EMULATOR_BIN, *args, "--state-dir", self.state]).stdout)

    def create_app(self, name, cert=None, *extra):
        args = ["app", "create", "--name", name, *extra]
        if cert:
            args += ["--cert", cert]
        return self.admin(*args)

    def stop(self):
        self.process.terminate()
        assert self.process.wait(timeout=30) == 0
        self.log.close()


class RunningAgent:
    """`p11jwt agent ARGS --print-env --output json`, started and waited for: `variables` is the
    environment it printed once it listened."""

    def __init__(self, args, env, workdir, name):
        out = workdir / f"{name}.env"
        self.log_file = workdir / f"{name}.log"
        self.log = open(self.log_file, "w")
        self.process = subprocess.Popen([str(BIN), "agent", *[str(a) for a in args], "--print-env", "--output", "json"],
                                        stdout=open(out, "w"), stderr=self.log, env=env)
        self.variables = {}
        deadline = time.time() + 30
        while time.time() < deadline and self.process.poll() is None and not self.variables:
            text = out.read_text()
            if text.endswith("\n"):
                self.variables = json.loads(text)
            time.sleep(0.05)
        assert self.variables, self.log_file.read_text()

    def stop(self):
        self.process.terminate()
        assert self.process.wait(timeout=30) == 0
        self.log.close()


class SoftwareIdentity:
    """An RSA key in a file and its self-signed certificate: MSAL's and azure-identity's own paths."""

    def __init__(self, directory, name, days=30):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .sign(self.key, hashes.SHA256()))
        self.key_pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode()
        self.cert_pem = self.certificate.public_bytes(serialization.Encoding.PEM).decode()
        self.sha1 = self.certificate.fingerprint(hashes.SHA1()).hex().upper()
        self.cert_file = directory / f"{name}.pem"
        self.cert_file.write_text(self.cert_pem)
        self.key_and_cert_file = directory / f"{name}-key-and-cert.pem"
        self.key_and_cert_file.write_text(self.key_pem + self.cert_pem)
        os.chmod(self.key_and_cert_file, 0o600)
        self.pfx_password = secrets.token_urlsafe(12)
        self.pfx_file = directory / f"{name}.pfx"
        self.pfx_file.write_bytes(pkcs12.serialize_key_and_certificates(
            name.encode(), self.key, self.certificate, None,
            serialization.BestAvailableEncryption(self.pfx_password.encode())))
        os.chmod(self.pfx_file, 0o600)


class HardwareIdentity:
    """A SoftHSM token with an RSA key whose certificate was made in the token by p11jwt."""

    def __init__(self, directory):
        self.label = "conformance"
        init = run([ROOT / "hsm-config/init-softhsm", "--dir", directory / "softhsm", self.label, "87654321", PIN])
        conf = init.stdout.strip().split("=", 1)[1].strip("'\"")
        self.env = dict(os.environ, SOFTHSM2_CONF=conf, XDG_CACHE_HOME=str(directory / "cache"),
                        XDG_STATE_HOME=str(directory / "state"), XDG_CONFIG_HOME=str(directory / "config"))
        self.env.pop("P11JWT_AGENT_SOCK", None)
        self.pin_file = directory / "pin"
        self.pin_file.write_text(PIN + "\n")
        os.chmod(self.pin_file, 0o600)
        token = f"pkcs11:token={self.label}"
        self.key = run([BIN, "keygen", "--token", token, "--label", "app", "--key-type", "rsa:2048",
                        "--pin-file", self.pin_file], env=self.env).stdout.strip()
        self.cert_file = directory / "hardware.pem"
        run([BIN, "cert", "create", "--key", self.key, "--subject", "CN=p11jwt conformance", "--days", "30",
             "--store", "--out", self.cert_file, "--pin-file", self.pin_file], env=self.env)

    def another_app(self, emulator, workdir, label):
        """A second key on the token (labelled `label`), its certificate made in the token, and an
        emulator application registered with that certificate: (key URI, app)."""
        key = run([BIN, "keygen", "--token", f"pkcs11:token={self.label}", "--label", label, "--key-type", "rsa:2048",
                   "--pin-file", self.pin_file], env=self.env).stdout.strip()
        cert = workdir / f"{label}.pem"
        run([BIN, "cert", "create", "--key", key, "--subject", f"CN={label}", "--days", "30", "--store", "--out", cert,
             "--pin-file", self.pin_file], env=self.env)
        return key, emulator.create_app(f"{label}-app", cert)

    def assertion(self, tenant, client_id, authority):
        """`p11jwt assertion`: a client assertion signed in the token."""
        return run([BIN, "assertion", "--key", self.key, "--tenant", tenant, "--client-id", client_id,
                    "--authority-host", authority, "--pin-file", self.pin_file], env=self.env).stdout.strip()


@pytest.fixture(scope="session")
def workdir():
    directory = Path(tempfile.mkdtemp(prefix="p11jwt-conformance-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def emulator(workdir):
    state = workdir / "emulator"
    state.mkdir()
    server = Emulator(state)
    # requests ≥ 2.32 ignores MSAL's verify= for discovery: the CA bundle comes from the environment.
    saved = {k: os.environ.get(k) for k in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    os.environ["REQUESTS_CA_BUNDLE"] = server.ca
    os.environ["SSL_CERT_FILE"] = server.ca
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="session")
def software(workdir, emulator):
    identity = SoftwareIdentity(workdir, "software-app")
    identity.app = emulator.create_app("software-app", identity.cert_file)
    return identity


@pytest.fixture(scope="session")
def hardware(workdir, emulator):
    identity = HardwareIdentity(workdir)
    identity.app = emulator.create_app("hardware-app", identity.cert_file)
    return identity


@pytest.fixture(scope="session")
def api(emulator, software, hardware):
    """An API (v2 tokens) with two app roles; both client apps are granted Orders.Read only."""
    created = emulator.create_app("orders-api", None, "--identifier-uri", "api://orders", "--app-role", "Orders.Read",
                                  "--app-role", "Orders.Write", "--access-token-version", "2")
    for client in (software.app["appId"], hardware.app["appId"]):
        emulator.admin("grant", "--client", client, "--resource", "api://orders", "--role", "Orders.Read")
    return created
