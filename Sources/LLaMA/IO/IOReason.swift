import Foundation

/// A file-system error as a short, lower-case reason ("permission denied", "no such file or
/// directory"), never a Foundation error dump. POSIX codes are preferred: Foundation on Linux
/// says "The file doesn't exist" for some permission errors.
public func ioReason(_ error: Error) -> String {
    if let w = error as? WriteError { return w.reason }
    var ns = error as NSError
    if let u = ns.userInfo[NSUnderlyingErrorKey] as? NSError { ns = u }
    if ns.domain == NSPOSIXErrorDomain { return posixReason(Int32(ns.code)) }
    if ns.domain == NSCocoaErrorDomain {
        switch ns.code {
        case NSFileReadNoPermissionError, NSFileWriteNoPermissionError: return "permission denied"
        case NSFileReadNoSuchFileError, NSFileNoSuchFileError: return "no such file or directory"
        case NSFileWriteOutOfSpaceError: return "no space left on device"
        case NSFileWriteVolumeReadOnlyError: return "read-only file system"
        case NSFileWriteFileExistsError: return "file exists"
        default: return ns.localizedDescription
        }
    }
    return "\(error)"
}

/// strerror, lower-cased to read as part of a sentence.
public func posixReason(_ code: Int32) -> String {
    String(cString: strerror(code)).lowercased()
}
