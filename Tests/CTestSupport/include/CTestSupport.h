#ifndef C_TEST_SUPPORT_H
#define C_TEST_SUPPORT_H
// C that the tests need and Swift cannot reach (glibc's _GNU_SOURCE calls).

/// Restricts the calling thread (and threads it creates afterwards) to the first CPU it may
/// use; returns that CPU, or -1 where unsupported. lora_test_unpin restores the previous set.
int lora_test_pin_one_cpu(void);
void lora_test_unpin(void);

#endif
