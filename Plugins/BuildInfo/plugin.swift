import Foundation
import PackagePlugin

/// Writes BuildInfo.swift (the git commit the binary is built from, or nil) before every build
/// of the `lora` target, so `lora --version` names it. Runs scripts/buildinfo.sh with /bin/sh;
/// the script rewrites the file only when the commit changed, so builds stay incremental.
@main
struct BuildInfoPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let out = context.pluginWorkDirectoryURL
        return [.prebuildCommand(
            displayName: "Stamping the git commit into BuildInfo.swift",
            executable: URL(fileURLWithPath: "/bin/sh"),
            arguments: [context.package.directoryURL.appendingPathComponent("scripts/buildinfo.sh").path,
                        context.package.directoryURL.path, out.appendingPathComponent("BuildInfo.swift").path],
            outputFilesDirectory: out)]
    }
}
