#!/usr/bin/env python3
"""The benchmark behind scripts/bench (which builds in release mode and then runs this).

Every figure is reported with its ratio to a reference measured in the same run, interleaved
round by round so that machine drift cancels: the C ceiling (bench-ceiling) for signing rates,
pkcs11-tool for the CLI's cold start. Medians over the rounds are reported.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
TENANT_ALGS = [("RS256", "rsa-pkcs", "rsa"), ("PS256", "rsa-pss", "rsa"), ("ES256", "ecdsa", "ec")]


def run(cmd, env=None, check=True, capture=True):
    result = subprocess.run(cmd, env=env, text=True, stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE)
    if check and result.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd[:3])}… failed: {result.stderr.strip()[:500]}")
    return result


def run_json(cmd, env=None):
    return json.loads(run(cmd, env).stdout.strip().splitlines()[-1])


def median(values):
    return statistics.median(values) if values else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bin", required=True, help="the release build's bin directory")
    parser.add_argument("--quick", action="store_true", help="a short run that only checks the benchmark works")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--module", default=SOFTHSM, help="the PKCS#11 module (default: SoftHSM, with a token made here)")
    parser.add_argument("--token", help="a token label on --module to use instead of a SoftHSM token made here")
    parser.add_argument("--pin-file", help="the PIN of --token")
    parser.add_argument("--rsa-key", default="bench-rsa", help="label of an RSA-2048 key on --token (with a certificate)")
    parser.add_argument("--ec-key", default="bench-ec", help="label of a P-256 key on --token (with a certificate)")
    args = parser.parse_args()

    rounds = 1 if args.quick else 3
    seconds = 0.5 if args.quick else 2.0
    cold_runs = 3 if args.quick else 11
    p11jwt = os.path.join(args.bin, "p11jwt")
    bench = os.path.join(args.bin, "p11jwt-bench")
    ceiling = os.path.join(args.bin, "bench-ceiling")
    emulator = os.path.join(args.bin, "entra-emulator")
    work = tempfile.mkdtemp(prefix="p11jwt-bench-")
    env = dict(os.environ)
    results = {"quick": args.quick, "rounds": rounds, "secondsPerRun": seconds, "rows": []}
    processes = []

    def row(name, value, unit, reference=None, ratio=None, target=None, met=None):
        results["rows"].append({"name": name, "value": value, "unit": unit, "reference": reference, "ratio": ratio, "target": target, "met": met})

    try:
        # ---- The token: made here (SoftHSM) unless one was given.
        if args.token:
            token, pin_file = args.token, args.pin_file
            if not pin_file:
                sys.exit("bench: --token needs --pin-file")
        else:
            token, pin_file = "p11jwt-bench", os.path.join(work, "pin")
            out = run(["hsm-config/init-softhsm", "--dir", os.path.join(work, "softhsm"), token, "87654321", "123456"]).stdout
            env["SOFTHSM2_CONF"] = out.strip().split("=", 1)[1]
            with open(pin_file, "w") as f:
                f.write("123456\n")
            os.chmod(pin_file, 0o600)
            for label, kind in ((args.rsa_key, "rsa:2048"), (args.ec_key, "ec:p256")):
                run([p11jwt, "keygen", "--module", args.module, "--token", f"pkcs11:token={token}", "--label", label, "--key-type", kind, "--pin-file", pin_file], env)
                run([p11jwt, "cert", "create", "--module", args.module, "--key", f"pkcs11:token={token};object={label}", "--subject", f"CN={label}",
                     "--store", "--out", os.path.join(work, f"{label}.pem"), "--pin-file", pin_file], env)
        labels = {"rsa": args.rsa_key, "ec": args.ec_key}

        def ceiling_run(mechanism, key, threads):
            return run_json([ceiling, "--module", args.module, "--token", token, "--pin-file", pin_file, "--key", labels[key],
                             "--mechanism", mechanism, "--threads", str(threads), "--seconds", str(seconds)], env)["perSecond"]

        def swift_run(mode, alg, key, threads):
            return run_json([bench, mode, "--module", args.module, "--key", f"pkcs11:token={token};object={labels[key]}", "--pin-file", pin_file,
                             "--alg", alg, "--threads", str(threads), "--seconds", str(seconds)], env)["perSecond"]

        # ---- Library sign(digest:) and full client assertions vs the C ceiling, interleaved.
        ceilings = {}
        for alg, mechanism, key in TENANT_ALGS:
            for threads in (1, 2):
                c, lib, assertion = [], [], []
                for _ in range(rounds):
                    c.append(ceiling_run(mechanism, key, threads))
                    lib.append(swift_run("library", alg, key, threads))
                    assertion.append(swift_run("assertion", alg, key, threads))
                ceiling_value = median(c)
                ceilings[(alg, threads)] = ceiling_value
                row(f"ceiling C {mechanism} {threads}t", ceiling_value, "sig/s")
                row(f"library sign {alg} {threads}t", median(lib), "sig/s", ceiling_value, median(lib) / ceiling_value)
                ratio = median(assertion) / ceiling_value
                row(f"assertions {alg} {threads}t", median(assertion), "jwt/s", ceiling_value, ratio, "≥ 0.97", ratio >= 0.97)

        # ---- The agent over its socket, with the emulator for tokens.
        state = os.path.join(work, "emulator")
        emu = subprocess.Popen([emulator, "serve", "--state-dir", state], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        processes.append(emu)
        for _ in range(300):
            if os.path.exists(os.path.join(state, "url")):
                break
            time.sleep(0.05)
        url = open(os.path.join(state, "url")).read().strip()
        rsa_pem = os.path.join(work, f"{labels['rsa']}.pem")
        if not os.path.exists(rsa_pem):
            # A token of the caller's: register the certificate stored with the key (the one the
            # agent signs with), read by OpenSC's pkcs11-tool.
            der = rsa_pem + ".der"
            run(["pkcs11-tool", "--module", args.module, "--token-label", token, "--read-object", "--type", "cert",
                 "--label", labels["rsa"], "-o", der], env)
            run(["openssl", "x509", "-inform", "DER", "-in", der, "-out", rsa_pem], env)
        app = json.loads(run([emulator, "app", "create", "--state-dir", state, "--name", "bench", "--cert", rsa_pem]).stdout)
        entra = ["--tenant", app["tenantId"], "--client-id", app["appId"], "--authority-host", url, "--graph-endpoint", url,
                 "--ca-file", os.path.join(state, "ca.pem")]
        runtime = os.path.join(work, "run")
        os.makedirs(runtime, mode=0o700)
        agent_env = dict(env, XDG_RUNTIME_DIR=runtime, P11JWT_LOG_LEVEL="error")
        agent_out = os.path.join(work, "agent.env")
        with open(agent_out, "w") as out:
            agent = subprocess.Popen([p11jwt, "agent", "--module", args.module, "--key", f"pkcs11:token={token};object={labels['rsa']}",
                                      "--pin-file", pin_file, "--print-env"] + entra, stdout=out, stderr=subprocess.DEVNULL, env=agent_env)
        processes.append(agent)
        for _ in range(300):
            if "P11JWT_AGENT_SOCK" in open(agent_out).read():
                break
            time.sleep(0.05)
        socket = os.path.join(runtime, "p11jwt", "agent.sock")
        for clients in (1, 2, 16):
            c, rates, p50, p99 = [], [], [], []
            for _ in range(rounds):
                c.append(ceiling_run("rsa-pkcs", "rsa", min(clients, 2)))
                r = run_json([bench, "agent", "--socket", socket, "--clients", str(clients), "--seconds", str(seconds), "--alg", "RS256"], env)
                rates.append(r["perSecond"])
                p50.append(r["p50Ms"])
                p99.append(r["p99Ms"])
            ref = median(c)
            ratio = median(rates) / ref
            target, met = ("≥ 0.90", ratio >= 0.90) if clients == 2 else (None, None)
            row(f"agent sign RS256 {clients} clients", median(rates), "sig/s", ref, ratio, target, met)
            row(f"agent sign RS256 {clients} clients p50", median(p50), "ms")
            row(f"agent sign RS256 {clients} clients p99", median(p99), "ms")
        cached = run_json([bench, "agent", "--socket", socket, "--clients", "1", "--seconds", str(seconds), "--operation", "token"], env)
        row("agent cached token p50", cached["p50Ms"], "ms")
        row("agent cached token p99", cached["p99Ms"], "ms", target="< 1 ms", met=cached["p99Ms"] < 1.0)

        # ---- Cached tokens while the token is slow: a second agent on the same token through
        # the fault-injecting module, whose C_Sign waits while a gate file exists (a PIN pad, a
        # busy network HSM). 16 signatures wait there while one client asks for cached tokens.
        gate = os.path.join(work, "sign-gate")
        slow_runtime = os.path.join(work, "run-slow")
        os.makedirs(slow_runtime, mode=0o700)
        slow_out = os.path.join(work, "agent-slow.env")
        slow_env = dict(env, XDG_RUNTIME_DIR=slow_runtime, P11JWT_LOG_LEVEL="error", P11JWT_FAULTS_MODULE=args.module, P11JWT_FAULTS_SIGN_GATE=gate)
        with open(slow_out, "w") as out:
            slow = subprocess.Popen([p11jwt, "agent", "--module", os.path.join(args.bin, "libp11jwt-faults.so"),
                                     "--key", f"pkcs11:token={token};object={labels['rsa']}", "--pin-file", pin_file, "--print-env"] + entra,
                                    stdout=out, stderr=subprocess.DEVNULL, env=slow_env)
        processes.append(slow)
        for _ in range(300):
            if "P11JWT_AGENT_SOCK" in open(slow_out).read():
                break
            time.sleep(0.05)
        slow_socket = os.path.join(slow_runtime, "p11jwt", "agent.sock")
        run_json([bench, "agent", "--socket", slow_socket, "--clients", "1", "--seconds", "0.2", "--operation", "token"], env)
        open(gate, "w").close()
        waiting = subprocess.Popen([bench, "agent", "--socket", slow_socket, "--clients", "16", "--seconds", "0.1", "--alg", "RS256"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(0.5)
        try:
            held = run_json([bench, "agent", "--socket", slow_socket, "--clients", "1", "--seconds", str(seconds), "--operation", "token"], env)
            still_waiting = waiting.poll() is None
        finally:
            os.remove(gate)
            waiting.wait(timeout=60)
        row("agent cached token p50, 16 signs waiting", held["p50Ms"], "ms")
        row("agent cached token p99, 16 signs waiting", held["p99Ms"], "ms", target="< 1 ms", met=held["p99Ms"] < 1.0 and still_waiting)

        hwm = 0
        with open(f"/proc/{agent.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024
        row("agent peak RSS under load", hwm, "MiB")

        # ---- CLI cold start: one `p11jwt assertion` process vs one `pkcs11-tool --sign` process.
        digest_file = os.path.join(work, "digest")
        with open(digest_file, "wb") as f:
            f.write(bytes(range(32)))
        key_id = None
        listing = json.loads(run([p11jwt, "objects", "--module", args.module, "--token", f"pkcs11:token={token}", "--pin-file", pin_file, "--output", "json"], env).stdout)
        for k in listing["privateKeys"]:
            if k.get("label") == labels["rsa"]:
                key_id = k["id"]
        pin = open(pin_file).read().strip()
        p11jwt_cmd = [p11jwt, "assertion", "--module", args.module, "--key", f"pkcs11:token={token};object={labels['rsa']}", "--pin-file", pin_file,
                      "--tenant", app["tenantId"], "--client-id", app["appId"], "--no-agent"]
        tool_cmd = ["pkcs11-tool", "--module", args.module, "--token-label", token, "--login", "--pin", pin, "--sign", "--mechanism", "RSA-PKCS",
                    "--id", key_id, "--input-file", digest_file, "--output-file", os.path.join(work, "sig")]
        ours, theirs = [], []
        for _ in range(cold_runs):
            for cmd, store in ((p11jwt_cmd, ours), (tool_cmd, theirs)):
                start = time.perf_counter()
                run(cmd, env)
                store.append(time.perf_counter() - start)
        ratio = median(ours) / median(theirs)
        row("CLI cold assertion", median(ours) * 1000, "ms", median(theirs) * 1000, ratio, "≤ 1.5", ratio <= 1.5)
        rss = run([sys.executable, "-c", "import resource,subprocess,sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"] + p11jwt_cmd, env).stdout.strip()
        rss_mib = int(rss) / 1024
        row("CLI peak RSS (assertion)", rss_mib, "MiB", target="≤ 40 MiB", met=rss_mib <= 40)

        # ---- rotate end to end against the emulator (RSA-2048), step by step.
        rotate_env = dict(env, XDG_STATE_HOME=os.path.join(work, "state"), XDG_CACHE_HOME=os.path.join(work, "cache"))
        start = time.perf_counter()
        report = json.loads(run([p11jwt, "rotate", "--module", args.module, "--key", f"pkcs11:token={token};object={labels['rsa']}",
                                 "--object-id", app["id"], "--old-key-id", app["keyId"], "--pin-file", pin_file, "--output", "json"] + entra, rotate_env).stdout)
        total = time.perf_counter() - start
        for step in report["steps"]:
            row(f"rotate: {step['step']}", step["seconds"] * 1000, "ms")
        row("rotate end to end (process)", total, "s", target="≤ 3 s", met=total <= 3)

        # ---- fleet rotate: N apps on this one token against the emulator, vs the token's own
        # RSA-2048 key-generation rate (each rotation makes one key: the fleet's limit), at the
        # fleet's concurrency (2 per token); then the same apps again under a 429 storm.
        if not args.token:
            apps_count = 24 if args.quick else 100
            # One more rotation than cores: while one does its network steps, the others keep
            # both cores generating keys.
            concurrency = (os.cpu_count() or 2) + 1
            fleet_env = dict(env, XDG_STATE_HOME=os.path.join(work, "fleet-state"), XDG_CACHE_HOME=os.path.join(work, "fleet-cache"), P11JWT_LOG_LEVEL="error")
            entries = []
            for n in range(apps_count):
                label = f"fleet{n}"
                run([p11jwt, "keygen", "--module", args.module, "--token", f"pkcs11:token={token}", "--label", label, "--key-type", "rsa:2048", "--pin-file", pin_file], env)
                pem = os.path.join(work, f"{label}.pem")
                run([p11jwt, "cert", "create", "--module", args.module, "--key", f"pkcs11:token={token};object={label}", "--subject", f"CN={label}",
                     "--store", "--out", pem, "--pin-file", pin_file], env)
                created = json.loads(run([emulator, "app", "create", "--state-dir", state, "--name", label, "--cert", pem, "--tenant", app["tenantId"]]).stdout)
                entries.append({"name": label, "clientId": created["appId"], "objectId": created["id"], "key": f"pkcs11:token={token};object={label}"})
            manifest = os.path.join(work, "fleet.json")
            with open(manifest, "w") as f:
                json.dump({"defaults": {"tenant": app["tenantId"], "authorityHost": url, "graphEndpoint": url, "caFile": os.path.join(state, "ca.pem"),
                                        "module": args.module, "pinFile": pin_file, "keyType": "rsa:2048", "deleteOld": True},
                           "apps": entries}, f)
            # As many keys as the fleet makes: RSA key generation times vary widely, and a rate
            # from a dozen keys can be a fifth off.
            keygen = run_json([bench, "keygen", "--module", args.module, "--token", f"pkcs11:token={token}", "--pin-file", pin_file,
                               "--threads", str(os.cpu_count() or 2), "--keys", str(apps_count)], env)["perSecond"]
            row(f"token keygen RSA-2048 {os.cpu_count() or 2}t (the limit)", keygen, "keys/s")

            def fleet_run(label, storm=None):
                if storm:
                    subprocess.run(["curl", "-sS", "--fail", "--cacert", os.path.join(state, "ca.pem"), "-H", "content-type: application/json",
                                    "-H", f"Authorization: Bearer {open(os.path.join(state, 'admin-token')).read().strip()}",
                                    "-d", json.dumps(storm), f"{url}/_emulator/faults"], check=True, capture_output=True)
                start = time.perf_counter()
                report = json.loads(run([p11jwt, "fleet", "rotate", manifest, "--concurrency-per-token", str(concurrency), "--output", "json"], fleet_env).stdout)
                elapsed = time.perf_counter() - start
                rotated = report["rotated"]
                if rotated != apps_count:
                    sys.exit(f"bench: fleet {label}: {rotated} of {apps_count} rotated: {report}")
                rate = rotated / elapsed
                return rate, report.get("throttled", 0)

            rate, _ = fleet_run("plain")
            ratio = rate / keygen
            row(f"fleet rotate {apps_count} apps", rate, "apps/s", keygen, ratio, "≥ 0.8", ratio >= 0.8)
            storm = {"failures": [{"route": "token", "count": apps_count // 2, "status": 429, "retryAfter": 1},
                                  {"route": "addKey", "count": apps_count // 4, "status": 429, "retryAfter": 1}]}
            stormy, closed = fleet_run("storm", storm)
            row(f"fleet rotate {apps_count} apps, 429 storm", stormy, "apps/s", keygen, stormy / keygen)
            row("fleet: times the shared gate closed in the storm", closed, "")
    finally:
        for p in reversed(processes):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)

    # ---- The table.
    print(f"{'measurement':42} {'value':>12} {'unit':6} {'reference':>12} {'ratio':>7}  target")
    for r in results["rows"]:
        ref = f"{r['reference']:.1f}" if r["reference"] is not None else ""
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else ""
        target = "" if r["target"] is None else f"{r['target']} {'met' if r['met'] else 'MISSED'}"
        print(f"{r['name']:42} {r['value']:12.2f} {r['unit']:6} {ref:>12} {ratio:>7}  {target}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    missed = [r["name"] for r in results["rows"] if r["met"] is False]
    if missed:
        print(f"\ntargets missed: {', '.join(missed)} (see the README's performance section)")


if __name__ == "__main__":
    main()
