import Foundation

/// A file-system error as a short, lower-case reason ("permission denied", "no such file or
/// directory", "not a directory"), never a Foundation error dump. POSIX codes are preferred:
/// Foundation on Linux says "The file doesn't exist" for some permission errors and only
/// "NSCocoaErrorDomain error 256" for others (a directory read as a file, a path through a file).
public func ioReason(_ error: Error) -> String {
    if let w = error as? WriteError { return w.reason }
    if let code = posixCode(error) { return posixReason(code) }
    let ns = error as NSError
    if ns.domain == NSCocoaErrorDomain {
        switch ns.code {
        case NSFileReadNoPermissionError, NSFileWriteNoPermissionError: return "permission denied"
        case NSFileReadNoSuchFileError, NSFileNoSuchFileError: return "no such file or directory"
        case NSFileWriteOutOfSpaceError: return "no space left on device"
        case NSFileWriteVolumeReadOnlyError: return "read-only file system"
        case NSFileWriteFileExistsError: return "file exists"
        case NSFileReadCorruptFileError: return "corrupt file"
        case NSFileReadInapplicableStringEncodingError: return "not valid UTF-8 text"
        case NSFileReadTooLargeError: return "file too large"
        default: return "unknown file error (code \(ns.code))"
        }
    }
    return "\(error)"
}

/// The errno behind a Foundation file error: the error itself when it is POSIX, else its
/// underlying error. On Linux the underlying error is a Swift `POSIXError` value, which
/// `as? NSError` does not match, so both spellings are tried.
func posixCode(_ error: Error) -> Int32? {
    if let p = error as? POSIXError { return p.code.rawValue }
    let ns = error as NSError
    if ns.domain == NSPOSIXErrorDomain { return Int32(ns.code) }
    if let u = ns.userInfo[NSUnderlyingErrorKey] as? Error, !(u is WriteError) {
        let un = u as NSError
        if un !== ns, un.domain == NSPOSIXErrorDomain { return Int32(un.code) }
    }
    return nil
}

/// strerror, lower-cased to read as part of a sentence.
public func posixReason(_ code: Int32) -> String {
    String(cString: strerror(code)).lowercased()
}

/// A Foundation or POSIX file error (from FileManager, `Data(contentsOf:)`,
/// `String(contentsOfFile:)`, `FileHandle`...) as one line, `PATH: cannot read: REASON`,
/// `PATH: cannot write: REASON` or `PATH: REASON`; nil for any other error. Every subcommand
/// reports such errors through this (`runReportingErrors`), so none prints an NSError dump.
public func fileErrorDescription(_ error: Error) -> String? {
    if error is WriteError { return "\(error)" }
    let ns = error as NSError
    guard ns.domain == NSCocoaErrorDomain || ns.domain == NSPOSIXErrorDomain else { return nil }
    let path = (ns.userInfo[NSFilePathErrorKey] as? String) ?? (ns.userInfo[NSURLErrorKey] as? URL)?.path
    let reason = ioReason(error)
    var verb = ""
    if ns.domain == NSCocoaErrorDomain {
        if (NSFileReadUnknownError..<NSFileWriteUnknownError).contains(ns.code) { verb = "cannot read: " }
        else if (NSFileWriteUnknownError..<(NSFileWriteUnknownError + 256)).contains(ns.code) { verb = "cannot write: " }
    }
    return "\(path ?? "file operation"): \(verb)\(reason)"
}

/// Why `url` cannot be read as a folder, or nil when it is one: "no such file or directory",
/// "not a directory" (a file, or a path through a file), "permission denied".
public func folderProblem(_ url: URL) -> String? {
    var st = stat()
    if stat(url.path, &st) != 0 { return posixReason(errno) }
    return (st.st_mode & S_IFMT) == S_IFDIR ? nil : posixReason(ENOTDIR)
}
