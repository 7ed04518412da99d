#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers (libFuzzer, from the Swift toolchain) with
# AddressSanitizer.
#   scripts/fuzz.sh TARGET SECONDS [--merge]   one target; --merge adds new interesting
#                                              inputs to Fuzz/corpus/TARGET
#   scripts/fuzz.sh all SECONDS                each target in turn; non-zero if any failed
#   scripts/fuzz.sh list                       the targets
#   scripts/fuzz.sh summary                    totals per target over Fuzz/runs.tsv
# Runs of 60 s or more append a line to Fuzz/runs.tsv (date, target, seconds, CPU seconds the
# fuzzer got, executions, coverage, corpus, CPU): the total per target is the sum over that
# file. FUZZ_NOBUILD=1 skips the build (runs side by side share one build).
# Runs on a copy of the committed corpus in .build-fuzz/run/TARGET; a crash, hang (10 s) or
# allocation over 2 GB leaves its input in .build-fuzz/run/TARGET/artifacts/ and fails (the
# next run of that target moves it to .build-fuzz/kept-artifacts/TARGET/).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCRATCH=$ROOT/.build-fuzz

TARGETS=(safetensors safetensors_index gguf gguf_tokenizer config adapter_config tokenizer_json data yaml prompter resume chat_data gguf_lora)
# Longest input per target: a little over its largest seed.
max_len() {
    case $1 in
        config|adapter_config|prompter) echo 4096 ;;
        data|resume|chat_data) echo 16384 ;;
        yaml) echo 32768 ;;
        *) echo 65536 ;;
    esac
}

usage() { echo "usage: scripts/fuzz.sh TARGET|all SECONDS [--merge]; targets: ${TARGETS[*]}" >&2; exit 2; }
[ "${1:-}" = list ] && { echo "${TARGETS[*]}"; exit 0; }
# Totals per target over Fuzz/runs.tsv: wall and CPU seconds, executions, the last run's
# coverage and corpus.
if [ "${1:-}" = summary ]; then
    awk -F'\t' 'NR > 1 { w[$2] += $3; c[$2] += $4; e[$2] += $5; n[$2]++; cov[$2] = $6; corp[$2] = $7 }
        END { printf "%-18s %6s %6s %5s %11s %6s %s\n", "target", "wall_s", "cpu_s", "runs", "executions", "cov", "corpus (last run)"
              for (t in w) printf "%-18s %6d %6d %5d %11d %6s %s\n", t, w[t], c[t], n[t], e[t], cov[t], corp[t] }' \
        Fuzz/runs.tsv | { read -r h; echo "$h"; sort; }
    exit 0
fi
[ $# -ge 2 ] || usage
TARGET=$1 SECONDS_=$2 MERGE=${3:-}
[[ $SECONDS_ =~ ^[0-9]+$ ]] || usage

build() {
    # -parse-as-library: the targets have no top-level code; libFuzzer brings main().
    # -sanitize applies to every Swift module, so LLaMA's parsers are instrumented too.
    local t0=$SECONDS
    (cd Fuzz && swift build -c debug --scratch-path "$SCRATCH" -j "$(nproc)" \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library 2>&1) \
        | grep -v "Cannot export local symbol" > "$SCRATCH/build.log" || true
    if ! grep -q "Build complete" "$SCRATCH/build.log"; then
        grep -E "error|warning: unre" "$SCRATCH/build.log" | head -40 >&2
        echo "fuzz build failed (log: $SCRATCH.log)" >&2; exit 1
    fi
    echo "build: $((SECONDS - t0)) s"
}

# CPU time (ticks) of this shell's waited-for children: what the fuzzer itself got, whatever
# else the machine ran.
child_cpu() { awk '{print $16 + $17}' "/proc/$$/stat"; }

run_one() {
    local t=$1 secs=$2 dir=$SCRATCH/run/$1
    local bin
    bin=$(cd Fuzz && swift build -c debug --scratch-path "$SCRATCH" --show-bin-path 2>/dev/null)/fuzz-$t
    [ -x "$bin" ] || { echo "$t: no binary $bin" >&2; return 1; }
    # A failed run's input must outlive the next run of the same target (it clears $dir).
    if compgen -G "$dir/artifacts/*" >/dev/null; then
        mkdir -p "$SCRATCH/kept-artifacts/$1" && mv "$dir/artifacts/"* "$SCRATCH/kept-artifacts/$1/"
    fi
    rm -rf "$dir"; mkdir -p "$dir/corpus" "$dir/artifacts"
    local cpu0; cpu0=$(child_cpu)
    cp "$ROOT/Fuzz/corpus/$t/"* "$dir/corpus/"
    # The targets hand each input to the parsers as a file (FuzzSupport.put): in memory
    # (/dev/shm) when there is one, else each input is a disk write and the fuzzer spends
    # half its time waiting on it (measured: 120-190 s of CPU per 300 s on a 2-core VM).
    local tmp="${FUZZ_TMPDIR:-}"
    if [ -z "$tmp" ]; then tmp=/dev/shm; [ -d /dev/shm ] && [ -w /dev/shm ] || tmp=${TMPDIR:-/tmp}; fi
    tmp=$(mktemp -d "$tmp/lora-fuzz-$t.XXXXXX")
    # detect_leaks=0: Foundation's Data(contentsOf:) leaks a buffer on empty files and the
    # Swift runtime keeps caches alive; leaks are not what these targets look for.
    (cd "$dir" && TMPDIR="$tmp/" ASAN_OPTIONS=detect_leaks=0:${ASAN_OPTIONS:-} "$bin" -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=2048 -detect_leaks=0 -print_final_stats=1 ${FUZZ_SEED:+-seed=$FUZZ_SEED} \
        -artifact_prefix="$dir/artifacts/" corpus > "$dir/log" 2>&1)
    local rc=$?
    local cpu=$(( ($(child_cpu) - cpu0) / $(getconf CLK_TCK) ))
    local last execs cov corp
    last=$(grep -E "^#[0-9]+" "$dir/log" | tail -1)
    execs=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "$dir/log" | grep -oE "[0-9]+$" | tail -1)
    cov=$(grep -oE "cov: [0-9]+" <<<"$last" | grep -oE "[0-9]+")
    corp=$(grep -oE "corp: [0-9]+/[0-9A-Za-z]+" <<<"$last" | cut -d' ' -f2)
    if [ $rc -ne 0 ]; then
        rm -rf "$tmp"
        echo "FAIL $t: exit $rc after ${execs:-?} executions; artifacts in $dir/artifacts/, log $dir/log"
        grep -E "ERROR|SUMMARY|Fatal error|deadly signal|Test unit written" "$dir/log" | head -8
        return 1
    fi
    echo "ok   $t: ${secs}s (${cpu} s CPU), ${execs:-?} executions, cov: ${cov:-?}, corpus: ${corp:-?}"
    # Runs of a minute or more are logged, so time spent on a target adds up across sessions.
    if [ "$secs" -ge 60 ]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$secs" "$cpu" "${execs:-?}" "${cov:-?}" "${corp:-?}" \
            "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores" >> "$ROOT/Fuzz/runs.tsv"
    fi
    if [ "$MERGE" = --merge ]; then
        local before after
        before=$(ls "$ROOT/Fuzz/corpus/$t" | wc -l)
        TMPDIR="$tmp/" ASAN_OPTIONS=detect_leaks=0 "$bin" -merge=1 -max_len="$(max_len "$t")" -detect_leaks=0 "$ROOT/Fuzz/corpus/$t" "$dir/corpus" > "$dir/merge.log" 2>&1
        after=$(ls "$ROOT/Fuzz/corpus/$t" | wc -l)
        echo "     merged $((after - before)) new inputs into Fuzz/corpus/$t"
    fi
    rm -rf "$tmp"
}

mkdir -p "$SCRATCH"
[ "${FUZZ_NOBUILD:-}" = 1 ] || build
if [ "$TARGET" = all ]; then
    failed=0
    for t in "${TARGETS[@]}"; do run_one "$t" "$SECONDS_" || failed=1; done
    exit $failed
fi
[[ " ${TARGETS[*]} " = *" $TARGET "* ]] || usage
run_one "$TARGET" "$SECONDS_"
