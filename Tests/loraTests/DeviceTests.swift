import Foundation
import XCTest

/// `--device` on a machine with no GPU (every CI run): `auto` runs on the CPU and says so,
/// `cuda` fails with one line naming what is missing and exit 1. A stand-in libcuda.so.1
/// (Fixtures/cuda/fake_driver.c, compiled here) drives the paths past a loaded driver.
final class DeviceTests: XCTestCase {
    static let model = CLITests.fixtures.appendingPathComponent("tiny-mha").path
    /// Folders with no CUDA library anywhere, so the answers do not depend on this machine.
    static let noCUDA = ["LORA_CUDA_LIB_DIR": "/nonexistent", "LORA_PYTHON": "/nonexistent/python3"]

    func lora(_ args: [String], _ env: [String: String] = noCUDA) throws -> LoraProcess.Result {
        try LoraProcess.run(args, environment: env)
    }

    func skipIfDriverPresent() throws {
        if dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL) != nil { throw XCTSkip("this machine has an NVIDIA driver") }
    }

    /// The one line a failed --device cuda prints.
    func assertCUDAError(_ r: LoraProcess.Result, contains parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 1, r.stderr, file: file, line: line)
        let lines = r.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "one line: \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.hasPrefix("error: CUDA is not usable: "), r.stderr, file: file, line: line)
        for p in parts { XCTAssertTrue(r.stderr.contains(p), "'\(p)' in: \(r.stderr)", file: file, line: line) }
    }

    func testAutoRunsOnTheCPUAndSaysSo() throws {
        try skipIfDriverPresent()
        let r = try lora(["info", "--device", "auto"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("backend: cpu"), r.stdout)
        XCTAssertTrue(r.stderr.contains("device: cpu (cpu "), r.stderr)
        XCTAssertTrue(r.stderr.contains("no GPU: no NVIDIA driver"), r.stderr)
        // auto is the default, and an explicit cpu prints no device line.
        XCTAssertTrue(try lora(["info"]).stderr.contains("device: cpu"))
        let cpu = try lora(["info", "--device", "cpu"])
        XCTAssertEqual(cpu.status, 0, cpu.stderr)
        XCTAssertFalse(cpu.stderr.contains("device:"), cpu.stderr)
    }

    func testCUDAFailsCleanlyOnEveryCommand() throws {
        try skipIfDriverPresent()
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lora-device-\(getpid())")
        defer { try? FileManager.default.removeItem(at: tmp) }
        let commands: [[String]] = [
            ["info"],
            ["generate", "--base-model", Self.model, "--instruction", "hi"],
            ["eval", "--base-model", Self.model, "--data-path", CLITests.repo.appendingPathComponent("data/tasks_eval.json").path],
            ["merge", "--base-model", Self.model, "--lora-weights", tmp.appendingPathComponent("adapter").path, "--output", tmp.path],
            ["finetune", "--base-model", Self.model, "--output-dir", tmp.path],
        ]
        for c in commands {
            for d in ["cuda", "cuda:1"] {
                assertCUDAError(try lora(c + ["--device", d]), contains: ["no NVIDIA driver", "libcuda.so.1", "/nonexistent"])
            }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp.path), "nothing written before the device check")
    }

    func testBadDeviceValuesNameTheFlagOrKey() throws {
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "CUDA"] {
            let r = try lora(["info", "--device", bad])
            XCTAssertNotEqual(r.status, 0)
            XCTAssertTrue(r.stderr.contains("--device") && r.stderr.contains(bad), r.stderr)
        }
        let yaml = FileManager.default.temporaryDirectory.appendingPathComponent("device-\(getpid()).yml")
        defer { try? FileManager.default.removeItem(at: yaml) }
        try "device: gpu\n".write(to: yaml, atomically: true, encoding: .utf8)
        let r = try lora(["finetune", "--config", yaml.path, "--print-config"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("'device'") && r.stderr.contains("auto, cpu, cuda or cuda:N"), r.stderr)
        // YAML and flag: the flag wins; the resolved value is printed in CodingKeys order.
        try "device: cpu\n".write(to: yaml, atomically: true, encoding: .utf8)
        XCTAssertTrue(try lora(["finetune", "--config", yaml.path, "--print-config"]).stdout.contains("\ndevice: cpu\n"))
        XCTAssertTrue(try lora(["finetune", "--config", yaml.path, "--device", "cuda:3", "--print-config"]).stdout.contains("\ndevice: cuda:3\n"))
    }

    // ---- past a loaded driver: a stand-in libcuda.so.1 ----

    /// Compiles Fixtures/cuda/fake_driver.c with `defines` into a fresh folder as libcuda.so.1.
    func fakeDriver(_ defines: [String]) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-fakecuda-\(getpid())-\(defines.joined())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let src = CLITests.fixtures.appendingPathComponent("cuda/fake_driver.c").path
        for cc in ["/usr/bin/cc", "/usr/bin/gcc", "/usr/bin/clang"] where FileManager.default.isExecutableFile(atPath: cc) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: cc)
            p.arguments = ["-shared", "-fPIC", "-o", dir.appendingPathComponent("libcuda.so.1").path, src] + defines
            try p.run()
            p.waitUntilExit()
            if p.terminationStatus == 0 { return dir }
        }
        throw XCTSkip("no C compiler to build the stand-in driver")
    }

    func testDriverWithNoDevice() throws {
        let dir = try fakeDriver(["-DNO_DEVICE"])
        let env = ["LORA_CUDA_LIB_DIR": dir.path, "LORA_PYTHON": "/nonexistent/python3"]
        assertCUDAError(try lora(["info", "--device", "cuda"], env), contains: ["no CUDA device", "CUDA_ERROR_NO_DEVICE"])
        let r = try lora(["info", "--device", "auto"], env)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("no GPU: no CUDA device"), r.stderr)
    }

    func testDriverWithoutNVRTCOrTooOld() throws {
        let dir = try fakeDriver(["-DDRIVER=12040"])
        let env = ["LORA_CUDA_LIB_DIR": dir.path, "LORA_PYTHON": "/nonexistent/python3"]
        assertCUDAError(try lora(["info", "--device", "cuda:1"], env), contains: ["no such CUDA device", "sees 1 device"])
        assertCUDAError(try lora(["info", "--device", "cuda"], env), contains: ["no NVRTC", "libnvrtc.so"])
        // Only an NVRTC newer than the driver: "driver too old" (any .so named so will do; the
        // version check comes before its symbols are read).
        try FileManager.default.copyItem(at: dir.appendingPathComponent("libcuda.so.1"), to: dir.appendingPathComponent("libnvrtc.so.13"))
        assertCUDAError(try lora(["info", "--device", "cuda"], env), contains: ["NVIDIA driver too old", "libnvrtc.so.13", "CUDA 12"])
    }
}

/// `lora cuda-check --compile-only` reports an NVRTC error with its log and exit 1. Needs the
/// NVRTC that scripts/nvrtc_check.sh puts in its cache folder (skipped when absent).
final class NVRTCCompileTests: XCTestCase {
    static let nvrtcDir = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/lora/nvrtc-13.5.37/nvidia/cu13/lib").path

    func testKernelsCompileAndAnErrorFails() throws {
        guard FileManager.default.fileExists(atPath: Self.nvrtcDir + "/libnvrtc.so.13") else { throw XCTSkip("no NVRTC in \(Self.nvrtcDir) (scripts/nvrtc_check.sh installs it)") }
        let env = ["LORA_CUDA_LIB_DIR": Self.nvrtcDir, "LORA_PYTHON": "/nonexistent/python3"]
        let ok = try LoraProcess.run(["cuda-check", "--compile-only", "--arch", "90"], environment: env)
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("all 23 entry points") && ok.stdout.contains("sm_90: CUBIN"), ok.stdout)
        let bad = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(getpid()).cu")
        defer { try? FileManager.default.removeItem(at: bad) }
        try "extern \"C\" __global__ void k(float *x) {\n  x[0] = undeclared_name;\n}\n".write(to: bad, atomically: true, encoding: .utf8)
        let r = try LoraProcess.run(["cuda-check", "--compile-only", "--arch", "80", "--source", bad.path], environment: env)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("NVRTC could not compile the CUDA kernels for compute_80"), r.stderr)
        XCTAssertTrue(r.stderr.contains("undeclared_name") && r.stderr.contains("(2)"), "the log names the line: \(r.stderr)")
    }
}
