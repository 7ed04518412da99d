import LLaMA
import XCTest

/// What the CLI reads from an MPI launcher's environment.
final class LauncherTests: XCTestCase {
    func testWorldSizeFromEitherLauncher() {
        XCTAssertNil(Launcher.worldSize(environment: [:]))
        XCTAssertNil(Launcher.worldSize(environment: ["OMPI_COMM_WORLD_SIZE": "1"]), "a world of one is a plain run")
        XCTAssertNil(Launcher.worldSize(environment: ["PMI_SIZE": "x"]))
        XCTAssertEqual(Launcher.worldSize(environment: ["OMPI_COMM_WORLD_SIZE": "4"])?.size, 4)
        XCTAssertEqual(Launcher.worldSize(environment: ["PMI_SIZE": "3"])?.variable, "PMI_SIZE")
    }

    func testThreadsPerRankShareTheHost() {
        let two = ["OMPI_COMM_WORLD_LOCAL_SIZE": "2"]
        XCTAssertEqual(Launcher.threadsPerRank(requested: 0, cores: 16, environment: two), 8)
        XCTAssertEqual(Launcher.threadsPerRank(requested: 0, cores: 2, environment: ["MPI_LOCALNRANKS": "4"]), 1, "at least one")
        XCTAssertEqual(Launcher.threadsPerRank(requested: 3, cores: 16, environment: two), 3, "--threads wins")
        XCTAssertEqual(Launcher.threadsPerRank(requested: 0, cores: 16, environment: [:]), 0, "one rank here: all cores")
    }
}
