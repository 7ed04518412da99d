// Plain scalar versions of the ops whose fast versions differ (GEMMs, SIMD exp, Float lanes).
// They accumulate in Double and follow the formulas as written, loop by loop, so a test can
// hold a fast kernel against them; nothing in training calls them.
public enum Reference {}
