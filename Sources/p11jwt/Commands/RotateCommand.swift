import ArgumentParser
import Entra
import Foundation
import Logging
import JOSE
import PKCS11
import TokenSigning
import Rotation

struct RotateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract: "Rotate the application's certificate to a new key made in the token, safely and resumably.",
        discussion: """
            Steps: preflight (the current key gets a token) → a new key pair generated in the token and a \
            self-signed certificate for it → addKey (proof by the current key) → a token with the new key, \
            retried while Entra replicates → the new key takes the old key's label, the old key is relabelled \
            as retired → removeKey of the old credential (proof by the new key) → the old key destroyed with \
            --delete-old, else kept under its retired label. \
            A journal (0600, in --state-dir) records every step: a run killed at any point is resumed by \
            running rotate again, or given up with --abandon. The old credential is removed only after the \
            new key got a token, and a key URI that selects by label never names a key Entra refuses.

            EXAMPLES:
              p11jwt rotate --object-id 6666… --dry-run
              p11jwt rotate --if-expiring-within 30d --delete-old   # from a daily timer
            """)

    @OptionGroup var newKey: NewKeyOptions

    @Option(name: .long, help: ArgumentHelp("Do nothing (exit 0) unless the current certificate expires within this (e.g. 30d).", valueName: "duration"))
    var ifExpiringWithin: DurationArgument?

    @Option(name: .long, help: "The keyId of the current credential (default: from earlier credential add / rotate runs, or a Graph read).")
    var oldKeyID: String?

    @Flag(name: .long, help: "Leave the old credential registered.")
    var keepOld = false

    @Flag(name: .long, help: "Destroy the old key and certificate on the token once its credential is removed (default: relabel as retired).")
    var deleteOld = false

    @Flag(name: .long, help: "Print the plan and change nothing.")
    var dryRun = false

    @Flag(name: .long, help: "Give up the rotation in progress: before addKey its new key is destroyed; after, nothing changes and the output says what stays.")
    var abandon = false

    @OptionGroup var graph: GraphOptions
    @OptionGroup var outputOptions: OutputOptions

    func validate() throws {
        if keepOld && deleteOld { throw ValidationError("--keep-old and --delete-old contradict each other") }
        if abandon && dryRun { throw ValidationError("--abandon and --dry-run contradict each other") }
    }

    func run() async throws {
        let prepared = try graph.prepare()
        let target = prepared.target
        var options = try newKey.rotationOptions()
        options.ifExpiringWithin = ifExpiringWithin?.seconds
        options.oldKeyID = oldKeyID
        options.keepOld = keepOld
        options.deleteOld = deleteOld
        options.dryRun = dryRun
        options.checkpoint = testCrashHook()
        let context = try await graph.keyOptions.open()
        defer { context.close() }
        let showProgress = outputOptions.output == .text
        let outcome = try await withEntraClient(prepared.configuration, logger: context.logger) { client in
            let objectID: String
            if let given = prepared.objectID {
                objectID = given
            } else {
                let (_, signer) = try await BlockingExecutor.shared.run { try currentSigner(context) }
                objectID = try await client.objectID(of: target, signer: signer)
            }
            let rotation = try Rotation(
                client: client, token: context.token, target: target, objectID: objectID, stateDirectory: prepared.stateDirectory,
                logger: context.logger, progress: { line in
                    if showProgress { FileHandle.standardError.write(Data("rotate: \(line)\n".utf8)) }
                })
            if abandon { return Outcome.abandoned(try rotation.abandon()) }
            return Outcome.report(try await rotation.run(options: options) { try currentSigner(context).1 })
        }
        let report: Rotation.Report
        switch outcome {
        case .report(let value):
            report = value
        case .abandoned(let abandoned):
            switch outputOptions.output {
            case .json:
                try printJSON(abandoned)
            case .text:
                print("abandoned the rotation of \(abandoned.objectID) (last step done: \(abandoned.step))")
                for line in abandoned.destroyed { print("destroyed: \(line)") }
                for line in abandoned.leftBehind { print("left: \(line)") }
                for action in abandoned.actions { print("if unwanted, run: \(Self.command(action))") }
            }
            return
        }
        switch outputOptions.output {
        case .json:
            try printJSON(report)
        case .text:
            switch report.outcome {
            case .notNeeded:
                print("no rotation needed: the current certificate does not expire within the window")
            case .planned:
                print("plan\(report.resumed ? " (resuming)" : ""):")
                for planned in report.plan { print("  - \(planned.action)\(planned.done ? " (done)" : "")") }
            default:
                for step in report.steps {
                    print(step.step.padding(toLength: 12, withPad: " ", startingAt: 0) + String(format: "%7.2fs  ", step.seconds) + step.outcome)
                }
                print("new key: \(report.newKeyURI ?? "?")")
                print("new certificate: \(report.newThumbprint ?? "?") keyId \(report.newKeyId ?? "(not reported)")")
                for line in report.instructions { print("todo: \(line)") }
                for action in report.actions { print("run: \(Self.command(action))") }
            }
        }
    }

    /// The command that carries out what a rotation leaves to do.
    static func command(_ action: Rotation.Action) -> String {
        switch action {
        case .removeCredential(let objectID, let keyID, let signingKey):
            return "p11jwt credential remove --object-id \(objectID)" + (signingKey.map { " --key '\($0)'" } ?? "") + " --key-id \(keyID ?? "<keyId>")"
        case .destroyObjects(let uri):
            return "p11jwt destroy '\(uri)'"
        }
    }

    private enum Outcome {
        case report(Rotation.Report)
        case abandoned(Rotation.AbandonReport)
    }

    /// The current key with its certificate as --cert / --cert-file give it (a certificate
    /// object's URI too), else the one stored with the key.
    private func currentSigner(_ context: TokenContext) throws -> (TokenContext, TokenSigner) {
        (context, try SignerSetup(keyOptions: graph.keyOptions, certificate: graph.certificateOptions).signer(in: context, requireCertificate: false))
    }
}

/// The new key and its certificate: `rotate` and `bootstrap` make one.
struct NewKeyOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Key type of the new key: rsa:2048|rsa:3072|rsa:4096|ec:p256|… (default: as the current key).", valueName: "type"))
    var keyType: String?

    @Option(name: .long, help: "Days the new certificate is valid.")
    var days: Int = 365

    @Option(name: .long, help: "Subject of the new certificate (default: the current certificate's).")
    var subject: String?

    @Option(name: .long, help: "Display name of the new credential.")
    var displayName: String?

    @Option(name: .long, help: ArgumentHelp("How long to wait for Entra to accept the new key (e.g. 600, 10m).", valueName: "duration"))
    var propagationTimeout: DurationArgument = DurationArgument(seconds: 600)

    func rotationOptions() throws -> Rotation.Options {
        var options = Rotation.Options()
        options.keySpec = try keyType.map { try Token.KeySpec($0) }
        options.days = days
        options.subject = subject
        if let subject { _ = try TokenCertificates.distinguishedName(subject) }
        options.displayName = displayName
        options.propagationTimeout = propagationTimeout.seconds
        return options
    }
}

/// The test hook of debug builds (see Rotation.checkpoints, Bootstrap.checkpoints): with
/// `P11JWT_TEST_CRASH_AT=POINT` the process kills itself there, to prove that a run killed
/// anywhere resumes. nil in release builds.
func testCrashHook() -> (@Sendable (String) -> Void)? {
    #if DEBUG
    guard let point = ProcessInfo.processInfo.environment["P11JWT_TEST_CRASH_AT"] else { return nil }
    let logger = Logger(label: "p11jwt.test-hook")
    return { reached in
        guard reached == point else { return }
        logger.warning("test hook: killing the process at \(reached)")
        kill(getpid(), SIGKILL)
    }
    #else
    return nil
    #endif
}

/// `600`, `90s`, `10m`, `12h`, `30d`.
struct DurationArgument: ExpressibleByArgument {
    var seconds: TimeInterval

    /// How `--help` shows a default: `600s`, `10m`, `12h`, `30d` (the largest whole unit).
    var defaultValueDescription: String {
        for (unit, size) in [("d", 86400.0), ("h", 3600.0), ("m", 60.0)] where seconds >= size && seconds.truncatingRemainder(dividingBy: size) == 0 {
            return "\(Int(seconds / size))\(unit)"
        }
        return "\(Int(seconds))s"
    }

    init(seconds: TimeInterval) { self.seconds = seconds }

    init?(argument: String) {
        let text = argument.trimmingCharacters(in: .whitespaces).lowercased()
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        if let last = text.last, let unit = units[last], let value = Double(text.dropLast()), value >= 0 {
            seconds = value * unit
        } else if let value = Double(text), value >= 0 {
            seconds = value
        } else {
            return nil
        }
    }
}
