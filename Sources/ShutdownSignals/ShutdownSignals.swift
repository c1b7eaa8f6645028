#if canImport(Glibc)
import Glibc
#endif

/// For servers that stop on SIGTERM / SIGINT through swift-service-lifecycle.
public enum ShutdownSignals {
    /// On Linux, Dispatch's signal sources read a signalfd and block the signal only in Dispatch's
    /// own thread, so any other thread that leaves SIGTERM unblocked takes the default action and
    /// the process dies (status 143) before the ServiceGroup sees the signal. Call this first in
    /// the command, before NIO and Hummingbird start their threads (which inherit the mask): the
    /// signals then stay pending for the signalfd.
    /// `also`: other signals a service of the process handles the same way (the agent's SIGHUP).
    public static func blockInAllThreads(also: [Int32] = []) {
        #if os(Linux)
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        for signal in also { sigaddset(&set, signal) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        #endif
    }
}
