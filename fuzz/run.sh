#!/bin/bash
# Builds and runs every cargo-fuzz target for SECONDS each (default 60):
#   bash fuzz/run.sh [SECONDS] [TARGET...]
# First replays fuzz/regressions/<target>/* (inputs that once crashed, kept so
# a fix stays fixed), then seeds fuzz/corpus/<target> from fuzz/seeds/<target>
# and fuzzes. Exits non-zero if any target crashed (on a regression input or
# a new one: libFuzzer prints it and leaves it in fuzz/artifacts/<target>/;
# copy it to fuzz/regressions/<target>/ once reported).
#
# cargo-fuzz needs nightly compiler features; RUSTC_BOOTSTRAP=1 enables them on
# the stable toolchain. Needs cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame header desc sfdisk_json plan)
fi
case $seconds in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

export RUSTC_BOOTSTRAP=1
# One build for every target (all are in fuzz/Cargo.toml).
cargo fuzz build

# Every target runs even when an earlier one failed, so that one known crash
# does not hide another; the exit status says whether any failed.
failed=()
for t in "${targets[@]}"; do
    if [ -n "$(find "regressions/$t" -type f ! -name .gitkeep 2>/dev/null)" ]; then
        echo "== $t: replaying fuzz/regressions/$t"
        # A directory given to `cargo fuzz run` replaces the corpus; -runs=0
        # executes each file once, without mutating, and fails on a crash.
        if ! cargo fuzz run "$t" "regressions/$t" -- -runs=0; then
            failed+=("$t (a regression input still crashes)")
        fi
    fi
    mkdir -p "corpus/$t"
    if [ -d "seeds/$t" ]; then
        cp -n "seeds/$t"/* "corpus/$t/" 2>/dev/null || true
    fi
    dict=()
    if [ -f "dicts/$t.dict" ]; then
        dict=("-dict=dicts/$t.dict")
    fi
    echo "== $t: fuzzing for ${seconds}s"
    if ! cargo fuzz run "$t" "corpus/$t" -- "${dict[@]}" \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1; then
        failed+=("$t (new crash, input in fuzz/artifacts/$t/)")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED:" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} target(s), ${seconds}s each, no crash"
