import CP11Kit
import Foundation
import Logging
import Synchronization

/// Where to load a PKCS#11 module from.
public enum ModuleSpec: Sendable, Hashable, CustomStringConvertible {
    /// A shared-object file, loaded with `dlopen`.
    case path(String)
    /// A module registered with p11-kit (`/usr/share/p11-kit/modules/*.module`), e.g. `softhsm2`.
    case name(String)
    /// The p11-kit proxy: every registered module behind one function list.
    case proxy

    /// `--module` semantics: anything with a `/` or ending in `.so` is a path, else a name;
    /// nil is the proxy.
    public init(_ argument: String?) {
        guard let argument, !argument.isEmpty else { self = .proxy; return }
        if argument.contains("/") || argument.hasSuffix(".so") || argument.contains(".so.") {
            self = .path(argument)
        } else {
            self = .name(argument)
        }
    }

    /// The module a URI names (`module-path` wins over `module-name`), else `fallback`.
    public init(uri: PKCS11URI, fallback: ModuleSpec) {
        if let path = uri.modulePath { self = .path(path) }
        else if let name = uri.moduleName { self = .name(name) }
        else { self = fallback }
    }

    public var description: String {
        switch self {
        case .path(let p): return p
        case .name(let n): return "p11-kit module '\(n)'"
        case .proxy: return "the p11-kit proxy"
        }
    }
}

/// Information a module reports about itself (`C_GetInfo`).
public struct ModuleInfo: Sendable, Hashable, Codable {
    public var manufacturer: String
    public var description: String
    public var cryptokiVersion: String
    public var libraryVersion: String

    init(_ info: CK_INFO) {
        manufacturer = paddedString(info.manufacturerID)
        description = paddedString(info.libraryDescription)
        cryptokiVersion = "\(info.cryptokiVersion.major).\(info.cryptokiVersion.minor)"
        libraryVersion = "\(info.libraryVersion.major).\(info.libraryVersion.minor)"
    }
}

/// A loaded and initialised PKCS#11 module.
///
/// A module is process-global state (one `dlopen`, one `C_Initialize`), so modules are shared:
/// loading the same file twice gives the same `Module`. It stays initialised until
/// ``finalize()`` is called.
public final class Module: @unchecked Sendable {
    /// What was asked for.
    public let spec: ModuleSpec
    /// The file that was loaded (nil for the proxy).
    public let path: String?
    /// The p11-kit registered name, when loaded by name.
    public let registeredName: String?
    public let info: ModuleInfo
    /// `C_GetInfo` as returned, for p11-kit's URI matching.
    let rawInfo: CK_INFO
    /// The function list; immutable for the module's life.
    let functions: UnsafePointer<CK_FUNCTION_LIST>
    let logger: Logger
    private let handle: UnsafeMutableRawPointer
    private let state = Mutex(State())
    /// Object-store access (find, attributes, keygen, create, destroy), one call at a time per
    /// module: SoftHSM's file store has failed with CKR_GENERAL_ERROR when a key pair was
    /// written while another thread rescanned the token. Signing does not take this lock.
    private let objectStoreLock = Mutex(())

    /// Logins, one at a time: login state is per application and token, and modules race
    /// on concurrent C_Login calls (tpm2-pkcs11 answers one of them CKR_GENERAL_ERROR).
    private let loginLock = Mutex(())

    func serializingLogins<R>(_ body: () throws -> R) rethrows -> R {
        try loginLock.withLock { _ in try body() }
    }

    /// `writing` marks calls that change objects (kept for the day a module allows shared reads).
    func withObjectStore<R>(writing: Bool, _ body: () throws -> R) rethrows -> R {
        try objectStoreLock.withLock { _ in try body() }
    }

    private struct State {
        var finalized = false
    }

    private static let loaded = Mutex<[String: Module]>([:])

    /// Loads (or returns the already loaded) module and initialises it with `CKF_OS_LOCKING_OK`.
    public static func load(_ spec: ModuleSpec, logger: Logger) throws -> Module {
        let (file, name) = try resolve(spec, logger: logger)
        let key = file ?? "<proxy>"
        return try loaded.withLock { modules in
            if let module = modules[key], !module.isFinalized { return module }
            let module = try Module(spec: spec, file: file, registeredName: name, logger: logger)
            modules[key] = module
            return module
        }
    }

    /// Resolves a spec to the file to `dlopen` (nil: the proxy inside libp11-kit).
    static func resolve(_ spec: ModuleSpec, logger: Logger) throws -> (String?, String?) {
        switch spec {
        case .proxy:
            return (nil, nil)
        case .path(let path):
            let expanded = (path as NSString).expandingTildeInPath
            guard FileManager.default.fileExists(atPath: expanded) else {
                throw PKCS11Error(
                    .moduleNotFound, "PKCS#11 module not found: no file at \(expanded)",
                    hint: "give the path of the module's .so file, or a p11-kit module name (see 'p11-kit list-modules'); registered here: \(registeredModules().map(\.name).joined(separator: ", "))",
                    settings: ["module"])
            }
            return (expanded, nil)
        case .name(let name):
            let registered = registeredModules()
            guard let match = registered.first(where: { $0.name == name }) else {
                throw PKCS11Error(
                    .moduleNotFound, "no PKCS#11 module named '\(name)' is registered with p11-kit",
                    hint: registered.isEmpty
                        ? "no modules are registered (see /usr/share/p11-kit/modules); give the module's .so path"
                        : "registered modules: \(registered.map(\.name).joined(separator: ", ")); or give a module's .so path",
                    settings: ["module"])
            }
            return (match.file, name)
        }
    }

    /// The modules registered with p11-kit: name and file.
    public static func registeredModules() -> [(name: String, file: String)] {
        guard let list = p11_kit_modules_load(nil, Int32(P11_KIT_MODULE_UNMANAGED)) else { return [] }
        defer { p11_kit_modules_release(list) }
        var result: [(String, String)] = []
        var index = 0
        while let module = list[index] {
            index += 1
            guard let namePtr = p11_kit_module_get_name(module) else { continue }
            defer { free(namePtr) }
            guard let filePtr = p11_kit_module_get_filename(module) else { continue }
            defer { free(filePtr) }
            result.append((String(cString: namePtr), String(cString: filePtr)))
        }
        return result.sorted { $0.0 < $1.0 }
    }

    private init(spec: ModuleSpec, file: String?, registeredName: String?, logger: Logger) throws {
        self.spec = spec
        self.path = file
        self.registeredName = registeredName
        self.logger = logger
        let soname = file ?? "libp11-kit.so.0"  // libp11-kit exports the proxy's C_GetFunctionList
        guard let handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL) else {
            let reason = dlerror().map { String(cString: $0) } ?? "unknown error"
            throw PKCS11Error(
                .moduleLoadFailed, "cannot load PKCS#11 module \(soname): \(reason)",
                hint: "is it a PKCS#11 module for this architecture? check its dependencies with ldd")
        }
        self.handle = handle
        do {
            self.functions = try Self.functionList(handle: handle, file: soname)
            try Self.initialize(functions, file: soname, logger: logger)
            self.rawInfo = try Self.readInfo(functions)
            self.info = ModuleInfo(rawInfo)
        } catch {
            dlclose(handle)
            throw error
        }
        logger.debug(
            "loaded PKCS#11 module",
            metadata: ["module": "\(soname)", "manufacturer": "\(info.manufacturer)", "version": "\(info.libraryVersion)"])
    }

    /// `C_GetInterface("PKCS 11")` where a 3.x module offers it, else `C_GetFunctionList`.
    private static func functionList(handle: UnsafeMutableRawPointer, file: String) throws -> UnsafePointer<CK_FUNCTION_LIST> {
        if let symbol = dlsym(handle, "C_GetInterface") {
            let getInterface = unsafeBitCast(symbol, to: P11JWT_C_GetInterface.self)
            var interface: UnsafeMutablePointer<P11JWT_CK_INTERFACE>?
            var name = Array("PKCS 11".utf8) + [0]
            let rv = name.withUnsafeMutableBufferPointer { getInterface($0.baseAddress, nil, &interface, 0) }
            // The 3.0 function list starts with the 2.40 one: the layout we call through.
            if rv == CKR_OK, let list = interface?.pointee.pFunctionList {
                return UnsafePointer(list.assumingMemoryBound(to: CK_FUNCTION_LIST.self))
            }
        }
        guard let symbol = dlsym(handle, "C_GetFunctionList") else {
            throw PKCS11Error(
                .moduleLoadFailed, "\(file) is not a PKCS#11 module: it exports neither C_GetInterface nor C_GetFunctionList")
        }
        let getFunctionList = unsafeBitCast(symbol, to: CK_C_GetFunctionList.self)
        var list: UnsafeMutablePointer<CK_FUNCTION_LIST>?
        let rv = ReturnValue(getFunctionList(&list))
        guard rv.isOK, let list else {
            throw PKCS11Error.call("C_GetFunctionList", rv, "\(file): C_GetFunctionList failed")
        }
        return UnsafePointer(list)
    }

    private static func initialize(_ functions: UnsafePointer<CK_FUNCTION_LIST>, file: String, logger: Logger) throws {
        // Without CKF_OS_LOCKING_OK SoftHSM (and others) switch their own locking off.
        var args = CK_C_INITIALIZE_ARGS()
        args.flags = CK_FLAGS(CKF_OS_LOCKING_OK)
        let rv = ReturnValue(withUnsafeMutablePointer(to: &args) { functions.pointee.C_Initialize($0) })
        if rv == .cryptokiAlreadyInitialized {
            logger.debug("module already initialised in this process", metadata: ["module": "\(file)"])
            return
        }
        guard rv.isOK else {
            throw PKCS11Error.call(
                "C_Initialize", rv, "cannot initialise PKCS#11 module \(file)",
                hint: "check the module's configuration (for SoftHSM: SOFTHSM2_CONF and its tokendir)")
        }
    }

    private static func readInfo(_ functions: UnsafePointer<CK_FUNCTION_LIST>) throws -> CK_INFO {
        var info = CK_INFO()
        let rv = ReturnValue(functions.pointee.C_GetInfo(&info))
        guard rv.isOK else { throw PKCS11Error.call("C_GetInfo", rv) }
        return info
    }

    var isFinalized: Bool { state.withLock { $0.finalized } }

    /// `C_Finalize`. Every session and token of this module is unusable afterwards.
    public func finalize() {
        let first = state.withLock { state -> Bool in
            defer { state.finalized = true }
            return !state.finalized
        }
        guard first else { return }
        let rv = ReturnValue(functions.pointee.C_Finalize(nil))
        if !rv.isOK { logger.debug("C_Finalize failed", metadata: ["rv": "\(rv)"]) }
        _ = Self.loaded.withLock { $0.removeValue(forKey: path ?? "<proxy>") }
    }

    /// Raw access to the C function list, for code that needs a call this layer lacks.
    public var functionList: UnsafePointer<CK_FUNCTION_LIST> { functions }

    /// More slots than any module has: a count beyond it is a module's error.
    static let maximumSlots = 4096

    /// Slots, optionally only those with a token present.
    public func slots(tokenPresent: Bool = true) throws -> [Slot] {
        var count: CK_ULONG = 0
        let present: CK_BBOOL = tokenPresent ? CK_BBOOL(CK_TRUE) : CK_BBOOL(CK_FALSE)
        var rv = ReturnValue(functions.pointee.C_GetSlotList(present, nil, &count))
        guard rv.isOK else { throw PKCS11Error.call("C_GetSlotList", rv) }
        var ids = [CK_SLOT_ID](repeating: 0, count: try PKCS11Error.checkedCount(count, limit: Self.maximumSlots, "C_GetSlotList", "a slot count of"))
        rv = ReturnValue(functions.pointee.C_GetSlotList(present, &ids, &count))
        guard rv.isOK else { throw PKCS11Error.call("C_GetSlotList", rv) }
        return try ids.prefix(try PKCS11Error.checkedCount(count, limit: ids.count, "C_GetSlotList", "a slot count of")).map { try Slot(module: self, id: $0) }
    }
}

/// A fixed-width, blank-padded PKCS#11 string field as a Swift string.
/// A fixed-size PKCS#11 text field's trailing NULs made blanks (the padding the standard asks for).
func blankPadded<T>(_ field: inout T) {
    withUnsafeMutableBytes(of: &field) { raw in
        var end = raw.count
        while end > 0 && (raw[end - 1] == 0 || raw[end - 1] == 0x20) {
            raw[end - 1] = 0x20
            end -= 1
        }
    }
}

func paddedString<T>(_ field: T) -> String {
    withUnsafeBytes(of: field) { raw in
        var bytes = Array(raw)
        while let last = bytes.last, last == 0x20 || last == 0 { bytes.removeLast() }
        return String(decoding: bytes, as: UTF8.self)
    }
}
