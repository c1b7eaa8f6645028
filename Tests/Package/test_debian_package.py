"""The Debian package of scripts/package, installed on this machine with apt-get, used from its
installed files only (the binaries, the units, the example config, the system user), and purged.
Run by `scripts/package --test` (root: it is a system install); P11JWT_DEB names the package.

The agent is started the way systemd starts p11jwt-agent.service from p11jwt-agent.socket: the
socket unit's listening socket (made by systemd-socket-activate, with the unit's owner, mode and
directory mode), then on the first connection the service's own ExecStart and Environment lines,
as its User=, with the PIN in a credentials directory (%d), its state directory, and UMask; a
drop-in's SOFTHSM2_CONF points it at a test token."""
import base64
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEB = os.environ.get("P11JWT_DEB", "")
VERSION = os.environ.get("P11JWT_DEB_VERSION", "")
PIN = "123456"
UNITS = "/lib/systemd/system"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a system package: run as root (scripts/package --test)"),
    pytest.mark.skipif(not DEB, reason="P11JWT_DEB is not set (scripts/package --test sets it)"),
]


def run(args, check=True, **kwargs):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args[:3]))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def as_user(user, args):
    """The command as `user` (uid, gid, no supplementary groups), as systemd's User= runs it."""
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--no-new-privs", "--", *args]


def is_installed():
    status = run(["dpkg-query", "-W", "-f=${Status}", "p11jwt"], check=False)
    return status.returncode == 0 and "installed" in status.stdout and "not-installed" not in status.stdout


@pytest.fixture(scope="module")
def installed():
    """The package installed (an earlier install purged first); purged at the end if a test did not."""
    run(["dpkg", "--purge", "p11jwt"], check=False)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", DEB],
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    files = [line for line in run(["dpkg", "-L", "p11jwt"]).stdout.splitlines() if line and line != "/."]
    yield files
    if is_installed():
        run(["dpkg", "--purge", "p11jwt"], check=False)


def test_it_installs_the_programs_pages_completions_units_and_examples(installed):
    status = run(["dpkg-query", "-W", "-f=${Status} ${Version}", "p11jwt"]).stdout
    assert status == f"install ok installed {VERSION}"
    expected = [
        "/usr/bin/p11jwt", "/usr/bin/entra-emulator",
        "/usr/share/man/man1/p11jwt.1.gz", "/usr/share/man/man1/p11jwt.agent.1.gz", "/usr/share/man/man1/entra-emulator.1.gz",
        "/usr/share/bash-completion/completions/p11jwt", "/usr/share/zsh/vendor-completions/_p11jwt",
        "/usr/share/fish/vendor_completions.d/p11jwt.fish",
        f"{UNITS}/p11jwt-agent.service", f"{UNITS}/p11jwt-agent.socket", f"{UNITS}/p11jwt-rotate.service",
        f"{UNITS}/p11jwt-rotate.timer",
        "/usr/share/doc/p11jwt/examples/config.yaml", "/usr/share/doc/p11jwt/examples/fleet.yaml",
        "/usr/share/doc/p11jwt/copyright", "/usr/share/doc/p11jwt/changelog.gz",
    ]
    for path in expected:
        assert path in installed, f"{path} is not in the package"
        assert os.path.exists(path), f"{path} is listed but not on disk"
    # Every command page is gzip-compressed troff.
    page = run(["sh", "-c", "gzip -dc /usr/share/man/man1/p11jwt.rotate.1.gz"]).stdout
    assert page.startswith(".") and "rotate" in page


def test_the_binaries_run_with_no_swift_runtime_installed(installed):
    assert run(["/usr/bin/p11jwt", "--version"]).stdout.strip() == VERSION
    assert run(["/usr/bin/entra-emulator", "--version"]).stdout.strip() == VERSION
    for tool in ("/usr/bin/p11jwt", "/usr/bin/entra-emulator"):
        libraries = run(["ldd", tool]).stdout
        assert "not found" not in libraries, libraries
        assert not re.search(r"libswift|libFoundation|libdispatch|libBlocksRuntime", libraries), \
            f"{tool} links a Swift runtime library dynamically:\n{libraries}"
    # Depends names what they link (dpkg-shlibdeps), p11-kit among it.
    depends = run(["dpkg-query", "-W", "-f=${Depends}", "p11jwt"]).stdout
    assert "libp11-kit0" in depends and "libc6" in depends, depends


def test_postinst_made_a_system_user_without_a_login(installed):
    user = pwd.getpwnam("p11jwt")
    assert user.pw_uid < 1000 and user.pw_shell in ("/usr/sbin/nologin", "/bin/false")
    assert user.pw_dir == "/var/lib/p11jwt"
    assert grp.getgrgid(user.pw_gid).gr_name == "p11jwt"


def test_the_installed_units_verify_and_the_completion_loads(installed):
    units = [f"{UNITS}/{name}" for name in ("p11jwt-agent.service", "p11jwt-agent.socket", "p11jwt-rotate.service", "p11jwt-rotate.timer")]
    result = run(["systemd-analyze", "verify", *units], check=False)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    completion = run(["bash", "-c", "source /usr/share/bash-completion/completions/p11jwt && complete -p p11jwt"])
    assert "p11jwt" in completion.stdout


@pytest.fixture(scope="module")
def workdir():
    directory = Path(tempfile.mkdtemp(prefix="p11jwt-package-"))
    os.chmod(directory, 0o711)  # the service user walks to its token directory
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def softhsm(installed, workdir):
    """A SoftHSM token in a directory of the service user's, with two keys and their certificates,
    made by the installed p11jwt."""
    init = run([ROOT / "hsm-config/init-softhsm", "--dir", workdir / "softhsm", "services", "87654321", PIN])
    conf = init.stdout.strip().split("=", 1)[1].strip("'\"")
    pin_file = workdir / "pin"
    pin_file.write_text(PIN + "\n")
    os.chmod(pin_file, 0o600)
    env = dict(os.environ, SOFTHSM2_CONF=conf, XDG_STATE_HOME=str(workdir / "state"), XDG_CACHE_HOME=str(workdir / "cache"))
    env.pop("P11JWT_AGENT_SOCK", None)
    keys = {}
    for name in ("orders", "billing"):
        key = run(["/usr/bin/p11jwt", "keygen", "--module", "softhsm2", "--token", "pkcs11:token=services", "--label", name,
                   "--key-type", "rsa:2048", "--pin-file", pin_file], env=env).stdout.strip()
        cert = workdir / f"{name}.pem"
        run(["/usr/bin/p11jwt", "cert", "create", "--module", "softhsm2", "--key", key, "--subject", f"CN={name}", "--days", "30",
             "--store", "--out", cert, "--pin-file", pin_file], env=env)
        keys[name] = (key, cert)
    # The token's files belong to the user the service runs as.
    run(["chown", "-R", "p11jwt:p11jwt", workdir / "softhsm"])
    return conf, env, keys


def test_tokens_lists_the_softhsm_token_through_p11kit(softhsm):
    conf, env, _ = softhsm
    listed = json.loads(run(["/usr/bin/p11jwt", "tokens", "--module", "softhsm2", "--output", "json"], env=env).stdout)
    assert "services" in json.dumps(listed)


class Emulator:
    def __init__(self, state):
        state.mkdir()
        self.state = state
        self.process = subprocess.Popen(["/usr/bin/entra-emulator", "serve", "--state-dir", str(state)],
                                        stdout=subprocess.DEVNULL, stderr=open(state / "serve.log", "w"))
        deadline = time.time() + 60
        url_file = state / "url"
        while time.time() < deadline and not (url_file.exists() and url_file.read_text().endswith("\n")):
            assert self.process.poll() is None, (state / "serve.log").read_text()
            time.sleep(0.05)
        self.url = url_file.read_text().strip()

    def create_app(self, name, cert):
        return json.loads(run(["/usr/bin/entra-emulator", "app", "create", "--name", name, "--cert", cert,
                               "--state-dir", self.state]).stdout)

    def stop(self):
        self.process.terminate()
        assert self.process.wait(timeout=30) == 0


def unit_lines(unit, wanted="[Service]"):
    """A section's `Key=value` lines of an installed unit, in order."""
    lines, section = [], None
    for raw in Path(unit).read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == wanted and line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            lines.append((key, value))
    return lines


def socket_get(path, request):
    """One HTTP/1.0 exchange over a Unix socket: the status code and the body."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(request.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture(scope="module")
def agent(softhsm, workdir):
    """p11jwt-agent.service as systemd would run it, configured from the packaged example config."""
    conf, _, keys = softhsm
    emulator = Emulator(workdir / "emulator")
    apps = {name: emulator.create_app(f"{name}-app", cert) for name, (_, cert) in keys.items()}
    # /etc/p11jwt: the example config with this machine's values, the PIN root-only, the CA readable.
    example = yaml.safe_load(Path("/usr/share/doc/p11jwt/examples/config.yaml").read_text())
    ca = Path("/etc/p11jwt/emulator-ca.pem")
    shutil.copy(workdir / "emulator" / "ca.pem", ca)
    os.chmod(ca, 0o644)
    example["tenant"] = apps["orders"]["tenantId"]
    example["authority-host"] = emulator.url
    example["ca-file"] = str(ca)
    for identity in example["identities"]:
        app = apps[identity["name"]]
        identity["clientId"], identity["key"] = app["appId"], keys[identity["name"]][0]
        identity.pop("objectId", None)
    Path("/etc/p11jwt/config.yaml").write_text(yaml.safe_dump(example))
    pin = Path("/etc/p11jwt/pin")
    pin.write_text(PIN + "\n")
    os.chmod(pin, 0o600)

    service = unit_lines(f"{UNITS}/p11jwt-agent.service")
    settings = dict(service)
    user = settings["User"]
    account = pwd.getpwnam(user)
    # LoadCredential=pin:/etc/p11jwt/pin: systemd copies the file into a directory only the unit reads.
    credentials = workdir / "credentials"
    credentials.mkdir(mode=0o700)
    name, source = settings["LoadCredential"].split(":", 1)
    shutil.copy(source, credentials / name)
    os.chmod(credentials / name, 0o400)
    run(["chown", "-R", f"{user}:{user}", credentials])
    # StateDirectory=, made by systemd with its mode.
    state = Path("/var/lib") / settings["StateDirectory"]
    state.mkdir(exist_ok=True)
    os.chown(state, account.pw_uid, account.pw_gid)
    os.chmod(state, int(settings["StateDirectoryMode"], 8))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": account.pw_dir, "USER": user, "LOGNAME": user,
           "SOFTHSM2_CONF": conf}  # the drop-in: Environment=SOFTHSM2_CONF=…
    for key, value in service:
        if key == "Environment":
            variable, _, assigned = value.partition("=")
            env[variable] = assigned.replace("%d", str(credentials))
    command = shlex.split(settings["ExecStart"])
    assert command[0] == "/usr/bin/p11jwt"
    umask = int(settings["UMask"], 8)
    # p11jwt-agent.socket: its directory (DirectoryMode=, root's), its listening socket, made
    # by systemd-socket-activate, which execs the service's command on the first connection.
    unit = dict(unit_lines(f"{UNITS}/p11jwt-agent.socket", "[Socket]"))
    socket_path = unit["ListenStream"]
    os.makedirs(os.path.dirname(socket_path), mode=int(unit["DirectoryMode"], 8), exist_ok=True)
    os.chmod(os.path.dirname(socket_path), int(unit["DirectoryMode"], 8))
    log = open(workdir / "agent.log", "w")
    activator = ["systemd-socket-activate", "--listen", socket_path, *[f"-E{name}" for name in sorted(env)]]
    process = subprocess.Popen(activator + as_user(user, command), env=env, stdout=log, stderr=log,
                               preexec_fn=lambda: os.umask(umask))
    deadline = time.time() + 60
    while time.time() < deadline and not os.path.exists(socket_path):
        assert process.poll() is None, (workdir / "agent.log").read_text()
        time.sleep(0.05)
    assert os.path.exists(socket_path), (workdir / "agent.log").read_text()
    # SocketUser=, SocketGroup=, SocketMode=: systemd's, before any client connects.
    shutil.chown(socket_path, unit["SocketUser"], unit["SocketGroup"])
    os.chmod(socket_path, int(unit["SocketMode"], 8))
    yield process, socket_path, apps, user
    if process.poll() is None:
        process.kill()
    # systemctl stop p11jwt-agent.socket (RemoveOnStop=yes).
    Path(socket_path).unlink(missing_ok=True)
    emulator.stop()
    for path in ("/etc/p11jwt/config.yaml", "/etc/p11jwt/pin", str(ca)):
        Path(path).unlink(missing_ok=True)


def claims(token):
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_the_agent_runs_from_the_unit_and_serves_each_identity_to_its_user(agent, workdir):
    process, socket_path, apps, user = agent
    # The service user gets a token for each identity over the socket API.
    for name, app in apps.items():
        body = json.dumps({"identity": name})
        request = ["curl", "-sS", "--fail-with-body", "--unix-socket", socket_path, "-H", "content-type: application/json",
                   "-d", body, "http://agent/v1/token"]
        answer = json.loads(run(as_user(user, request)).stdout)
        assert claims(answer["access_token"])["appid"] == app["appId"], answer
    # Another uid (root here) is not one the config allows: its connection is closed unanswered.
    refused = run(["curl", "-sS", "--unix-socket", socket_path, "http://agent/v1/health"], check=False)
    assert refused.returncode != 0
    # The agent serves the socket it was handed (it is the activator's process, exec'd), and
    # leaves the socket unit's owner and mode as they were.
    status = json.loads(run(as_user(user, ["/usr/bin/p11jwt", "agent", "status", "--socket", socket_path, "--output", "json"])).stdout)
    assert status["pid"] == process.pid and status["endpoints"]["socketFromSystemd"] is True, status
    unit = dict(unit_lines(f"{UNITS}/p11jwt-agent.socket", "[Socket]"))
    info = os.stat(socket_path)
    assert oct(info.st_mode & 0o777) == oct(int(unit["SocketMode"], 8)) and pwd.getpwuid(info.st_uid).pw_name == unit["SocketUser"]
    # The state directory is the service user's, closed to others.
    info = os.stat("/var/lib/p11jwt")
    assert info.st_mode & 0o077 == 0 and pwd.getpwuid(info.st_uid).pw_name == user, oct(info.st_mode)
    # SIGTERM (systemctl stop p11jwt-agent.service): a clean exit; the socket stays, systemd's,
    # for the next connection to start the agent again.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, (workdir / "agent.log").read_text()
    assert os.path.exists(socket_path)


def test_purge_removes_every_file_the_user_and_the_state(installed, agent):
    files = installed
    # The administrator's files in /etc/p11jwt are theirs to remove; then purge leaves nothing.
    for path in ("/etc/p11jwt/config.yaml", "/etc/p11jwt/pin", "/etc/p11jwt/emulator-ca.pem"):
        Path(path).unlink(missing_ok=True)
    result = run(["dpkg", "--purge", "p11jwt"])
    assert not is_installed(), result.stdout
    left = [path for path in files if os.path.lexists(path) and not os.path.isdir(path)]
    assert left == [], f"files left after purge: {left}"
    # Directories only the package used are gone too (shared ones like /usr/bin stay).
    for directory in ("/etc/p11jwt", "/usr/share/doc/p11jwt", "/var/lib/p11jwt", "/var/cache/p11jwt", "/run/p11jwt"):
        assert not os.path.exists(directory), f"{directory} is left after purge"
    with pytest.raises(KeyError):
        pwd.getpwnam("p11jwt")
    with pytest.raises(KeyError):
        grp.getgrnam("p11jwt")
